package apala_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/apala-api/apala-go"
)

// Every example starts its own apala.NewDemoServer: an in-memory Apala API
// (an httptest.Server) that accepts apala.DemoAPIKey. Point a real program at
// your Apala endpoint instead, and read the key from your secret store.

// customer is the UUID of a customer of the demo company.
const customer = "123e4567-e89b-42d3-a456-426614174000"

// Basic authentication: the API key is exchanged for a token pair. Most
// programs never call Authenticate: the first API call does it by itself.
func ExampleClient_Authenticate() {
	srv := apala.NewDemoServer()
	defer srv.Close()

	c, err := apala.NewClient(apala.DemoAPIKey, apala.WithBaseURL(srv.URL))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	auth, err := c.Authenticate(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("company:", auth.CompanyName)
	fmt.Println("token lifetime:", time.Duration(auth.ExpiresIn)*time.Second)
	fmt.Println("token type:", auth.TokenType)
	// Output:
	// company: Acme Lending
	// token lifetime: 1h0m0s
	// token type: Bearer
}

// Configuration from the environment: APALA_API_KEY, APALA_BASE_URL and
// APALA_COMPANY_GUID. Options given to NewClientFromEnv win over them.
func ExampleNewClientFromEnv() {
	srv := apala.NewDemoServer()
	defer srv.Close()

	// A deployment sets these outside the program.
	os.Setenv(apala.EnvAPIKey, apala.DemoAPIKey)
	os.Setenv(apala.EnvBaseURL, srv.URL)
	os.Setenv(apala.EnvCompanyGUID, apala.DemoCompanyGUID)
	defer func() {
		for _, k := range []string{apala.EnvAPIKey, apala.EnvBaseURL, apala.EnvCompanyGUID} {
			os.Unsetenv(k)
		}
	}()

	c, err := apala.NewClientFromEnv(apala.WithTimeout(30 * time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if _, err := c.AccessToken(context.Background()); err != nil {
		log.Fatal(err)
	}
	fmt.Println("company GUID:", c.CompanyGUID())
	fmt.Println("company:", c.Token().CompanyName)
	fmt.Println(strings.Replace(fmt.Sprint(c), srv.URL, "$APALA_BASE_URL", 1)) // never shows the key
	// Output:
	// company GUID: 550e8400-e29b-41d4-a716-446655440000
	// company: Acme Lending
	// apala.Client{base_url:$APALA_BASE_URL api_key:[REDACTED]}
}

// A manual refresh. The client refreshes by itself inside the refresh margin
// before expiry; call RefreshAccessToken only to force a new access token,
// after a permission change for example.
func ExampleClient_RefreshAccessToken() {
	srv := apala.NewDemoServer()
	defer srv.Close()
	c, err := apala.NewClient(apala.DemoAPIKey, apala.WithBaseURL(srv.URL))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	// With no refresh token held yet, nothing is sent.
	_, err = c.RefreshAccessToken(ctx)
	fmt.Println("before authenticating:", errors.Is(err, apala.ErrNotAuthenticated))

	if _, err := c.Authenticate(ctx); err != nil {
		log.Fatal(err)
	}
	before := c.Token().AccessToken
	ref, err := c.RefreshAccessToken(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("new lifetime:", time.Duration(ref.ExpiresIn)*time.Second)
	fmt.Println("token replaced:", c.Token().AccessToken != before)
	// Output:
	// before authenticating: true
	// new lifetime: 1h0m0s
	// token replaced: true
}

// Token inspection: Token is a snapshot that does no I/O. Printing it never
// shows the token itself.
func ExampleClient_Token() {
	srv := apala.NewDemoServer()
	defer srv.Close()
	c, err := apala.NewClient(apala.DemoAPIKey, apala.WithBaseURL(srv.URL))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	fmt.Println("valid before first use:", c.Token().Valid())

	// AccessToken returns a valid token, fetching one when needed; use it
	// only to hand the token to code outside this package.
	if _, err := c.AccessToken(context.Background()); err != nil {
		log.Fatal(err)
	}
	tok := c.Token()
	fmt.Println("valid:", tok.Valid())
	fmt.Println("type:", tok.TokenType)
	fmt.Println("company:", tok.CompanyName)
	fmt.Println("expires within the hour:", time.Until(tok.ExpiresAt) <= time.Hour)
	fmt.Println("printed:", strings.Contains(fmt.Sprintf("%v %+v %#v", tok, tok, tok), tok.AccessToken))
	// Output:
	// valid before first use: false
	// valid: true
	// type: Bearer
	// company: Acme Lending
	// expires within the hour: true
	// printed: false
}

// Handling errors: each kind is told apart with errors.Is or errors.As,
// never by reading the message.
func Example_errorHandling() {
	srv := apala.NewDemoServer()
	defer srv.Close()
	ctx := context.Background()
	fast := apala.WithRetryBackoff(time.Millisecond, 10*time.Millisecond)

	// 401: the API key is wrong. Not retried.
	bad, _ := apala.NewClient("not-the-key", apala.WithBaseURL(srv.URL), fast)
	defer bad.Close()
	_, err := bad.AccessToken(ctx)
	fmt.Println("401 unauthorized:", errors.Is(err, apala.ErrUnauthorized))
	fmt.Println("  ", err)

	// 403: the key lacks a permission. Not retried.
	srv.Fail("/api/auth/token", http.StatusForbidden, `{"error":"key lacks permissions"}`)
	_, err = bad.Authenticate(ctx)
	var apiErr *apala.APIError
	if errors.As(err, &apiErr) {
		fmt.Println("403 forbidden:", errors.Is(err, apala.ErrForbidden), apiErr.StatusCode, apiErr.Message)
	}

	c, _ := apala.NewClient(apala.DemoAPIKey, apala.WithBaseURL(srv.URL), fast)
	defer c.Close()

	// 5xx: retried (twice by default), then reported.
	for i := 0; i < 3; i++ {
		srv.Fail("/api/feedback", http.StatusServiceUnavailable, `{"error":"maintenance"}`)
	}
	_, err = c.SubmitFeedback(ctx, apala.Feedback{MessageID: "m-1", Score: apala.ScoreGood})
	fmt.Println("5xx server error:", errors.Is(err, apala.ErrServer), "after", srv.Hits("/api/feedback"), "attempts")

	// Bad input: refused before anything is sent.
	_, err = c.SubmitFeedback(ctx, apala.Feedback{MessageID: "m-1", Score: "excellent"})
	var invalid *apala.ValidationError
	fmt.Println("invalid input:", errors.As(err, &invalid), invalid.Field)

	// Unreachable server: a connection error, after the retries.
	down := apala.NewDemoServer()
	down.Close()
	off, _ := apala.NewClient(apala.DemoAPIKey, apala.WithBaseURL(down.URL), fast)
	defer off.Close()
	_, err = off.AccessToken(ctx)
	fmt.Println("unreachable:", errors.Is(err, apala.ErrConnection))

	// The caller's deadline: unwraps to context.DeadlineExceeded.
	expired, cancel := context.WithTimeout(ctx, -time.Second)
	defer cancel()
	_, err = c.SubmitFeedback(expired, apala.Feedback{MessageID: "m-1", Score: apala.ScoreGood})
	fmt.Println("deadline:", errors.Is(err, context.DeadlineExceeded))
	// Output:
	// 401 unauthorized: true
	//    apala: POST /api/auth/token: 401 Unauthorized: invalid API key
	// 403 forbidden: true 403 key lacks permissions
	// 5xx server error: true after 3 attempts
	// invalid input: true Score
	// unreachable: true
	// deadline: true
}

// Debug logging through log/slog. Nothing is logged without WithLogger, and
// no record ever holds the API key or a token.
func ExampleWithLogger() {
	srv := apala.NewDemoServer()
	defer srv.Close()

	// Drop the time and the duration so that the output is the same on
	// every run.
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey || a.Key == "duration" {
				return slog.Attr{}
			}
			return a
		},
	}))
	c, err := apala.NewClient(apala.DemoAPIKey, apala.WithBaseURL(srv.URL), apala.WithLogger(logger))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	fb := apala.Feedback{MessageID: "m-1", Score: apala.ScoreGood}
	if _, err := c.SubmitFeedback(ctx, fb); err != nil {
		log.Fatal(err)
	}
	srv.RevokeTokens() // the next call is answered 401, then replayed
	if _, err := c.SubmitFeedback(ctx, fb); err != nil {
		log.Fatal(err)
	}
	// Output:
	// level=DEBUG msg="apala: http attempt" method=POST path=/api/auth/token status=200 attempt=1
	// level=INFO msg="apala: authenticated" company_id=7c9e6679-7425-40de-944b-e07fc1f90ae7 company_name="Acme Lending" expires_in=1h0m0s
	// level=DEBUG msg="apala: http attempt" method=POST path=/api/feedback status=200 attempt=1
	// level=DEBUG msg="apala: http attempt" method=POST path=/api/feedback status=401 attempt=1
	// level=DEBUG msg="apala: http attempt" method=POST path=/api/auth/refresh status=200 attempt=1
	// level=INFO msg="apala: token refreshed" expires_in=1h0m0s
	// level=DEBUG msg="apala: http attempt" method=POST path=/api/feedback status=200 attempt=2
}

// The production pattern: one client per process, created at start-up,
// shared by every goroutine, closed at shutdown. However many goroutines
// call at once, the API key is exchanged once.
func Example_production() {
	srv := apala.NewDemoServer()
	defer srv.Close()

	c, err := apala.NewClient(apala.DemoAPIKey,
		apala.WithBaseURL(srv.URL),
		apala.WithCompanyGUID(apala.DemoCompanyGUID),
		apala.WithMaxRetries(3),                                     // transient failures: 4 attempts in all
		apala.WithRetryBackoff(200*time.Millisecond, 5*time.Second), // jittered, exponential
		apala.WithTimeout(10*time.Second),                           // per attempt
	)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := c.SubmitFeedback(ctx, apala.Feedback{MessageID: fmt.Sprintf("m-%d", i), Score: apala.ScoreNeutral})
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			failed++
		}
	}
	fmt.Println("calls:", srv.Hits("/api/feedback"), "failed:", failed)
	fmt.Println("API-key exchanges:", srv.Hits("/api/auth/token"))
	// Output:
	// calls: 50 failed: 0
	// API-key exchanges: 1
}

// Do sends a call this package does not wrap, with the same token handling,
// retries and error types as the rest.
func ExampleClient_Do() {
	srv := apala.NewDemoServer()
	defer srv.Close()
	c, err := apala.NewClient(apala.DemoAPIKey, apala.WithBaseURL(srv.URL))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	in := map[string]any{"message_id": "m-1", "customer_responded": true, "score": "good"}
	var out struct {
		ID         string `json:"id"`
		MessageID  string `json:"message_id"`
		InsertedAt string `json:"inserted_at"`
	}
	if err := c.Do(context.Background(), http.MethodPost, "/api/feedback", in, &out); err != nil {
		log.Fatal(err)
	}
	fmt.Println(out.ID, out.MessageID, out.InsertedAt)

	err = c.Do(context.Background(), http.MethodPost, "/api/no_such_call", in, nil)
	fmt.Println(err)
	// Output:
	// fb-0001 m-1 2025-01-15T10:30:00.123456
	// apala: POST /api/no_such_call: 404 Not Found: no such endpoint
}

// HTTPClient hands an *http.Client to code that builds its own requests:
// it sends the bearer token to the Apala origin only, and renews it when the
// server answers 401.
func ExampleClient_HTTPClient() {
	srv := apala.NewDemoServer()
	defer srv.Close()
	c, err := apala.NewClient(apala.DemoAPIKey, apala.WithBaseURL(srv.URL))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	hc := c.HTTPClient()
	body := strings.NewReader(`{"message_id":"m-1","customer_responded":false,"score":"bad"}`)
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/api/feedback", body)
	if err != nil {
		log.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", "3f2b9c1d8e7a4b6c9d0e1f2a3b4c5d6e")
	resp, err := hc.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Score string `json:"score"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.Status, out.Score)
	// Output:
	// 200 OK bad
}

// ProcessMessage sends a conversation and the message about to be sent.
// Empty message ids are generated; zero send times become now.
func ExampleClient_ProcessMessage() {
	srv := apala.NewDemoServer()
	defer srv.Close()
	c, err := apala.NewClient(apala.DemoAPIKey, apala.WithBaseURL(srv.URL), apala.WithCompanyGUID(apala.DemoCompanyGUID))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	resp, err := c.ProcessMessage(context.Background(), apala.MessageRequest{
		CustomerID: customer,
		ZipCode:    "90210",
		Messages: []apala.Message{
			{Content: "Hi, is my loan approved?", Channel: apala.ChannelSMS, ReplyOrNot: true},
			{Content: "We are reviewing your application.", Channel: apala.ChannelSMS},
		},
		Candidate: apala.Message{Content: "Please upload your last bank statement.", Channel: apala.ChannelSMS, MessageID: "cand-1"},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.Company)
	fmt.Println(resp.CustomerID)
	fmt.Println(resp.CandidateMessage.MessageID, resp.CandidateMessage.Channel, resp.CandidateMessage.Content)
	// Output:
	// 550e8400-e29b-41d4-a716-446655440000
	// 123e4567-e89b-42d3-a456-426614174000
	// cand-1 SMS Please upload your last bank statement.
}

// OptimizeMessage rewords a candidate message and recommends a channel.
// Customer metadata is optional, field by field.
func ExampleClient_OptimizeMessage() {
	srv := apala.NewDemoServer()
	defer srv.Close()
	c, err := apala.NewClient(apala.DemoAPIKey, apala.WithBaseURL(srv.URL), apala.WithCompanyGUID(apala.DemoCompanyGUID))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	repeat := 1
	opt, err := c.OptimizeMessage(context.Background(), apala.MessageRequest{
		CustomerID: customer,
		Messages:   []apala.Message{{Content: "Can I borrow more this month?", Channel: apala.ChannelSMS, ReplyOrNot: true}},
		Candidate:  apala.Message{Content: "Your new offer is ready."},
		Metadata: &apala.CustomerMetadata{
			IsRepeatBorrower:       &repeat,
			CreditScoreBin:         apala.CreditScore650To700,
			RequestedLoanAmountBin: apala.LoanAmount1000To2000,
			MonthlyIncomeBin:       apala.MonthlyIncome3000To4000,
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("id:", opt.MessageID)
	fmt.Println("original:", opt.OriginalMessage)
	fmt.Println("optimized:", opt.OptimizedMessage)
	fmt.Println("channel:", opt.RecommendedChannel)
	// Output:
	// id: msg-0003
	// original: Your new offer is ready.
	// optimized: Your new offer is ready - reply YES and we will call you today.
	// channel: SMS
}

// SubmitFeedback reports how one message fared.
func ExampleClient_SubmitFeedback() {
	srv := apala.NewDemoServer()
	defer srv.Close()
	c, err := apala.NewClient(apala.DemoAPIKey, apala.WithBaseURL(srv.URL))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	sent := time.Date(2025, 1, 15, 10, 30, 0, 0, time.UTC)
	fb, err := c.SubmitFeedback(context.Background(), apala.Feedback{
		MessageID:         "msg-0003",
		CustomerResponded: true,
		Score:             apala.ScoreGood,
		ActualSentMessage: "Your new offer is ready - reply YES and we will call you today.",
		PositiveRewards:   []apala.PositiveReward{apala.RewardSigningLoanAgreement},
		SendTimestamp:     sent,
		ReplyTimestamp:    sent.Add(12 * time.Minute),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(fb.ID, fb.MessageID, fb.Score, fb.PositiveRewards)
	fmt.Println("replied after:", fb.ReplyTimestamp.Sub(fb.SendTimestamp))
	fmt.Println("stored at:", fb.InsertedAt.Format(time.RFC3339))
	// Output:
	// fb-0001 msg-0003 good [signing_loan_agreement]
	// replied after: 12m0s
	// stored at: 2025-01-15T10:30:00Z
}

// SubmitFeedbackBulk reports many outcomes in one call. The answer is never
// silently partial: fewer entries stored than sent is an error.
func ExampleClient_SubmitFeedbackBulk() {
	srv := apala.NewDemoServer()
	defer srv.Close()
	c, err := apala.NewClient(apala.DemoAPIKey, apala.WithBaseURL(srv.URL))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	res, err := c.SubmitFeedbackBulk(context.Background(), []apala.Feedback{
		{MessageID: "msg-0001", CustomerResponded: true, Score: apala.ScoreGood},
		{MessageID: "msg-0002", Score: apala.ScoreBad},
		{MessageID: "msg-0003", Score: apala.ScoreNeutral},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("stored:", res.Count)
	for _, fb := range res.Feedback {
		fmt.Println(fb.ID, fb.MessageID, fb.Score)
	}
	// Output:
	// stored: 3
	// fb-0001 msg-0001 good
	// fb-0002 msg-0002 bad
	// fb-0003 msg-0003 neutral
}

// The feedback loop: optimise a message, send the optimised text on the
// recommended channel, then report the outcome quoting the returned id.
func Example_feedbackLoop() {
	srv := apala.NewDemoServer()
	defer srv.Close()
	c, err := apala.NewClient(apala.DemoAPIKey, apala.WithBaseURL(srv.URL), apala.WithCompanyGUID(apala.DemoCompanyGUID))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	opt, err := c.OptimizeMessage(ctx, apala.MessageRequest{
		CustomerID: customer,
		Candidate:  apala.Message{Content: "Your payment is due on Friday."},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("send on %s: %s\n", opt.RecommendedChannel, opt.OptimizedMessage)

	// ... the message is sent, and the customer answers ...
	sentAt := time.Now()

	fb, err := c.SubmitFeedback(ctx, apala.Feedback{
		MessageID:         opt.MessageID,
		CustomerResponded: true,
		Score:             apala.ScoreGood,
		ActualSentMessage: opt.OptimizedMessage,
		PositiveRewards:   []apala.PositiveReward{apala.RewardUpdatingAccountNumber},
		SendTimestamp:     sentAt,
		ReplyTimestamp:    sentAt.Add(5 * time.Minute),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("feedback", fb.ID, "for", fb.MessageID, "scored", fb.Score)
	// Output:
	// send on SMS: Your payment is due on Friday - reply YES and we will call you today.
	// feedback fb-0001 for msg-0003 scored good
}
