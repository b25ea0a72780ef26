module github.com/apala-api/apala-go

go 1.21
