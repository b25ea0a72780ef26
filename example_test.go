package apala_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apala-api/apala-go"
)

// Every example starts its own apala.FakeServer, the in-memory Apala API
// that ships with the package, and so runs as it is when copied into a
// program. In yours, point the client at your Apala endpoint instead
// (WithBaseURL, or APALA_BASE_URL) and read the key from your secret store.

// customer is the UUID of one of the company's customers.
const customer = "123e4567-e89b-42d3-a456-426614174000"

// The whole flow, start to end: authenticate, optimise a message, report how
// it fared, refresh the token, recover from revoked tokens, and handle an
// error. TestTour prints the same with go test -run TestTour -v.
func Example() {
	if err := tour(os.Stdout); err != nil {
		log.Fatal(err)
	}
	// Output:
	// 1. authenticated: company Acme Lending (550e8400-e29b-41d4-a716-446655440000), token valid for 1h0m0s
	// 2. optimised msg-0001 on SMS: "Your payment is due on Friday." -> "Your payment is due on Friday - reply YES and we will call you today."
	// 3. feedback fb-0001 stored for msg-0001: good, rewards [updating_account_number]
	// 4. refreshed by hand: a new access token, valid for 1h0m0s
	// 5. tokens revoked at the server: the next call was answered 401, the client got a new token and replayed it (token requests so far: 2 exchanges, 2 refreshes)
	// 6. error handled: server error true, rate limited false, after 3 attempts; quote request id req-0011 in a ticket
	// 7. bad input refused before sending: apala: invalid Score: "excellent" is not one of [good bad neutral]
}

// TestTour is the first command of the README: it prints the flow of
// Example with go test -run TestTour -v.
func TestTour(t *testing.T) {
	var w io.Writer = io.Discard
	if testing.Verbose() {
		w = os.Stdout
	}
	if err := tour(w); err != nil {
		t.Fatal(err)
	}
}

// tour walks the flow against a FakeServer and tells w what happened.
func tour(w io.Writer) error {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()    // in yours: apala.NewClient(key, apala.WithBaseURL(...), apala.WithCompanyGUID(...))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()

	auth, err := c.Authenticate(ctx) // optional: the first call does it
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "1. authenticated: company %s (%s), token valid for %v\n", auth.CompanyName, auth.CompanyID, auth.ExpiresAt.Sub(srv.Now()))

	req := apala.MessageRequest{
		CustomerID: customer,
		Messages:   []apala.Message{{Content: "When is my payment due?", Channel: apala.ChannelSMS, ReplyOrNot: true}},
		Candidate:  apala.Message{Content: "Your payment is due on Friday."},
	}
	opt, err := c.OptimizeMessage(ctx, req)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "2. optimised %s on %s: %q -> %q\n", opt.MessageID, opt.RecommendedChannel, opt.OriginalMessage, opt.OptimizedMessage)

	fb, err := c.SubmitFeedback(ctx, apala.Feedback{
		MessageID:         opt.MessageID,
		CustomerResponded: true,
		Score:             apala.ScoreGood,
		PositiveRewards:   []apala.PositiveReward{apala.RewardUpdatingAccountNumber},
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "3. feedback %s stored for %s: %s, rewards %v\n", fb.ID, fb.MessageID, fb.Score, fb.PositiveRewards)

	ref, err := c.RefreshAccessToken(ctx) // the client refreshes by itself; this forces one
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "4. refreshed by hand: a new access token, valid for %v\n", ref.ExpiresAt.Sub(srv.Now()))

	srv.RevokeTokens()
	if _, err := c.SubmitFeedback(ctx, apala.Feedback{MessageID: opt.MessageID, Score: apala.ScoreGood}); err != nil {
		return err
	}
	fmt.Fprintf(w, "5. tokens revoked at the server: the next call was answered 401, the client got a new token and replayed it (token requests so far: %d exchanges, %d refreshes)\n",
		srv.Requests("/api/auth/token"), srv.Requests("/api/auth/refresh"))

	for i := 0; i < 3; i++ {
		srv.Fail("/api/message_optimizer", http.StatusServiceUnavailable, "maintenance")
	}
	var info apala.ResponseInfo
	_, err = c.OptimizeMessage(ctx, req, apala.WithResponseInfo(&info))
	var apiErr *apala.APIError
	if !errors.As(err, &apiErr) {
		return fmt.Errorf("want an *APIError, got %v", err)
	}
	fmt.Fprintf(w, "6. error handled: server error %v, rate limited %v, after %d attempts; quote request id %s in a ticket\n",
		errors.Is(err, apala.ErrServer), errors.Is(err, apala.ErrRateLimited), info.Attempts, apiErr.RequestID)

	_, err = c.SubmitFeedback(ctx, apala.Feedback{MessageID: opt.MessageID, Score: "excellent"})
	fmt.Fprintf(w, "7. bad input refused before sending: %v\n", err)
	return nil
}

// Testing your own code: give it a client of a FakeServer, then check what
// the server received. reminder stands for a service of yours.
func ExampleFakeServer() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	r := &reminder{apala: c}

	text, err := r.remind(context.Background(), customer, "Your payment is due on Friday.")
	if err != nil {
		log.Fatal(err)
	}
	// What a test asserts: the text sent, the calls made, the feedback stored.
	fmt.Println("sent:", text)
	fmt.Println("optimizer calls:", srv.Requests("/api/message_optimizer"))
	for _, fb := range srv.Feedback() {
		fmt.Println("feedback:", fb.ID, fb.MessageID, fb.Score, fb.ActualSentMessage == text)
	}

	// And the failure path: the optimizer is down, the reminder goes out as
	// written.
	for i := 0; i < 3; i++ {
		srv.Fail("/api/message_optimizer", http.StatusServiceUnavailable, "maintenance")
	}
	text, err = r.remind(context.Background(), customer, "Your payment is due on Monday.")
	fmt.Println("sent:", text, err)
	// Output:
	// sent: Your payment is due on Friday - reply YES and we will call you today.
	// optimizer calls: 1
	// feedback: fb-0001 msg-0001 neutral true
	// sent: Your payment is due on Monday. <nil>
}

// reminder is a service of the user's: it words a reminder with the
// optimizer, falls back to the plain text when the optimizer fails, and
// records what it sent.
type reminder struct{ apala *apala.Client }

func (r *reminder) remind(ctx context.Context, customerID, text string) (string, error) {
	req := apala.MessageRequest{CustomerID: customerID, Candidate: apala.Message{Content: text}}
	opt, err := r.apala.OptimizeMessage(ctx, req)
	if err != nil {
		return text, nil // the reminder still goes out
	}
	// ... send opt.OptimizedMessage on opt.RecommendedChannel ...
	_, err = r.apala.SubmitFeedback(ctx, apala.Feedback{
		MessageID: opt.MessageID, Score: apala.ScoreNeutral, ActualSentMessage: opt.OptimizedMessage,
	})
	return opt.OptimizedMessage, err
}

// A scripted answer: the optimizer rate-limits the call, and the caller's
// code reads how long to wait. A scripted answer comes before every check;
// then the server answers normally again.
func ExampleFakeServer_Respond() {
	srv := apala.NewFakeServer()                     // stands in for your Apala endpoint
	c, err := srv.NewClient(apala.WithMaxRetries(0)) // so that the caller sees the 429
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	srv.Respond("/api/message_optimizer", 1, apala.FakeResponse{
		Status: http.StatusTooManyRequests,
		Header: http.Header{"Retry-After": {"30"}},
		Body:   `{"error": "slow down"}`,
	})
	req := apala.MessageRequest{CustomerID: customer, Candidate: apala.Message{Content: "Your payment is due on Friday."}}
	_, err = c.OptimizeMessage(ctx, req)
	var apiErr *apala.APIError
	if errors.As(err, &apiErr) && errors.Is(err, apala.ErrRateLimited) {
		fmt.Println("rate limited:", apiErr.Message, "- retry in", apiErr.RetryAfter)
	}

	res, err := c.OptimizeMessage(ctx, req)
	fmt.Println("then:", res.MessageID, err)
	// Output:
	// rate limited: slow down - retry in 30s
	// then: msg-0001 <nil>
}

// Asserting on what a call sent: Received returns the requests the server
// got, with their headers and bodies, for a test to decode and check.
func ExampleFakeServer_Received() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// The code under test optimises a reply, with the conversation so far.
	_, err = c.OptimizeMessage(context.Background(), apala.MessageRequest{
		CustomerID: customer,
		Messages: []apala.Message{{Content: "Is my loan approved?", Channel: apala.ChannelSMS, MessageID: "m-1",
			SendTimestamp: time.Date(2025, 1, 15, 9, 0, 0, 0, time.UTC), ReplyOrNot: true}},
		Candidate: apala.Message{Content: "Yes! Your payment is due on Friday."},
		Metadata:  &apala.CustomerMetadata{CreditScoreBin: apala.CreditScore650To700},
	})
	if err != nil {
		log.Fatal(err)
	}

	sent := srv.Received("/api/message_optimizer")
	var body struct {
		CustomerID     string `json:"customer_id"`
		CreditScoreBin string `json:"credit_score_bin"`
		Messages       []struct {
			Content    string `json:"content"`
			ReplyOrNot string `json:"reply_or_not"`
		} `json:"messages"`
	}
	if err := json.Unmarshal(sent[0].Body, &body); err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(sent), "request:", sent[0].Method, sent[0].Path)
	fmt.Println("customer_id sent:", body.CustomerID == customer)
	fmt.Println("credit_score_bin:", body.CreditScoreBin)
	fmt.Printf("history: %d message, %q, reply_or_not %q\n", len(body.Messages), body.Messages[0].Content, body.Messages[0].ReplyOrNot)
	fmt.Println("idempotency key sent:", sent[0].Header.Get("Idempotency-Key") != "")
	// Output:
	// 1 request: POST /api/message_optimizer
	// customer_id sent: true
	// credit_score_bin: SCORE_650_700
	// history: 1 message, "Is my loan approved?", reply_or_not "true"
	// idempotency key sent: true
}

// Token expiry without sleeping: the server's clock moves by Advance, and
// the clients NewClient makes judge their tokens by it, so the call after
// the lifetime refreshes the token first.
func ExampleFakeServer_Advance() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	srv.SetTokenLifetime(time.Minute)
	c, err := srv.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	fb := apala.Feedback{MessageID: "msg-0001", Score: apala.ScoreGood}

	if _, err := c.SubmitFeedback(ctx, fb); err != nil {
		log.Fatal(err)
	}
	fmt.Println("token expires in:", c.Token().ExpiresAt.Sub(srv.Now()))

	srv.Advance(2 * time.Minute) // past the token's lifetime, at once
	fmt.Println("valid after Advance:", c.Token().Valid())
	if _, err := c.SubmitFeedback(ctx, fb); err != nil {
		log.Fatal(err)
	}
	fmt.Println("refreshes:", len(srv.Received("/api/auth/refresh")))
	for _, r := range srv.Received("") {
		fmt.Println(r.At.Format("15:04:05"), r.Path)
	}
	// Output:
	// token expires in: 1m0s
	// valid after Advance: false
	// refreshes: 1
	// 10:00:00 /api/auth/token
	// 10:00:00 /api/feedback
	// 10:02:00 /api/auth/refresh
	// 10:02:00 /api/feedback
}

// Authentication: the API key is exchanged for a token pair. Most programs
// never call Authenticate: the first API call does it by itself.
func ExampleClient_Authenticate() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()    // in yours: apala.NewClient(key, apala.WithBaseURL(...))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	auth, err := c.Authenticate(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("company:", auth.CompanyName)
	fmt.Println("company id:", auth.CompanyID)
	fmt.Println("token lifetime:", auth.ExpiresAt.Sub(srv.Now()))
	fmt.Println("token type:", auth.TokenType)
	fmt.Println("valid:", auth.Valid())
	fmt.Println("printed:", auth) // never shows the token
	// Output:
	// company: Acme Lending
	// company id: 550e8400-e29b-41d4-a716-446655440000
	// token lifetime: 1h0m0s
	// token type: Bearer
	// valid: true
	// printed: apala.Token{access_token:[REDACTED] token_type:Bearer expires_at:2025-01-15 11:00:00 +0000 UTC company_id:550e8400-e29b-41d4-a716-446655440000 company_name:Acme Lending}
}

// Configuration from the environment: APALA_API_KEY, APALA_BASE_URL and
// APALA_COMPANY_GUID. Options given to NewClientFromEnv win over them. The
// company GUID is the company the message calls name: the company_id of the
// token answer.
func ExampleNewClientFromEnv() {
	srv := httptest.NewServer(apala.NewFakeServer()) // stands in for your Apala endpoint
	defer srv.Close()

	// A deployment sets these outside the program.
	os.Setenv(apala.EnvAPIKey, apala.FakeAPIKey)
	os.Setenv(apala.EnvBaseURL, srv.URL)
	os.Setenv(apala.EnvCompanyGUID, apala.FakeCompanyGUID)
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
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()
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
	fmt.Println("new lifetime:", ref.ExpiresAt.Sub(srv.Now()))
	fmt.Println("token replaced:", c.Token().AccessToken != before)
	// Output:
	// before authenticating: true
	// new lifetime: 1h0m0s
	// token replaced: true
}

// Token inspection: Token is a snapshot that does no I/O. Printing it never
// shows the token itself.
func ExampleClient_Token() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()
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
	fmt.Println("type:", tok.TokenType)
	fmt.Println("company:", tok.CompanyName)
	// A FakeServer's clients judge their tokens by the server's clock.
	fmt.Println("expires in:", tok.ExpiresAt.Sub(srv.Now()), "valid:", tok.Valid())
	fmt.Println("printed:", strings.Contains(fmt.Sprintf("%v %+v %#v", tok, tok, tok), tok.AccessToken))
	// Output:
	// valid before first use: false
	// type: Bearer
	// company: Acme Lending
	// expires in: 1h0m0s valid: true
	// printed: false
}

// Handling errors: each kind is told apart with errors.Is or errors.As,
// never by reading the message.
func Example_errorHandling() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	// 401 from the token endpoint: the API key is wrong. Not retried.
	srv.Fail("/api/auth/token", http.StatusUnauthorized, "invalid API key")
	_, err = c.Authenticate(ctx)
	fmt.Println("401 unauthorized:", errors.Is(err, apala.ErrUnauthorized))
	fmt.Println("  ", err)

	// 403: the key lacks a permission. Not retried.
	srv.Fail("/api/auth/token", http.StatusForbidden, "key lacks permissions")
	_, err = c.Authenticate(ctx)
	var apiErr *apala.APIError
	if errors.As(err, &apiErr) {
		fmt.Println("403 forbidden:", errors.Is(err, apala.ErrForbidden), apiErr.StatusCode, apiErr.Message)
	}

	// After a failed token request, automatic ones wait for a cooldown
	// (1s, doubling to 30s); meanwhile calls get the last error, marked.
	_, err = c.AccessToken(ctx)
	fmt.Println("cooldown:", errors.Is(err, apala.ErrForbidden), strings.Contains(err.Error(), "(cached: no new token request until"))
	if _, err := c.Authenticate(ctx); err != nil { // explicit calls ignore the cooldown
		log.Fatal(err)
	}

	// 5xx: retried (twice by default), then reported.
	for i := 0; i < 3; i++ {
		srv.Fail("/api/feedback", http.StatusServiceUnavailable, "maintenance")
	}
	_, err = c.SubmitFeedback(ctx, apala.Feedback{MessageID: "m-1", Score: apala.ScoreGood})
	fmt.Println("5xx server error:", errors.Is(err, apala.ErrServer), "after", srv.Requests("/api/feedback"), "attempts")

	// Bad input: refused before anything is sent.
	_, err = c.SubmitFeedback(ctx, apala.Feedback{MessageID: "m-1", Score: "excellent"})
	var invalid *apala.ValidationError
	fmt.Println("invalid input:", errors.As(err, &invalid), invalid.Field)

	// Unreachable server: a connection error, after the retries.
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	off, err := apala.NewClient(apala.FakeAPIKey, apala.WithBaseURL(down.URL), apala.WithRetryBackoff(time.Millisecond, 10*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
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
	//    apala: POST /api/auth/token: 401 Unauthorized: invalid API key (request id req-0001)
	// 403 forbidden: true 403 key lacks permissions
	// cooldown: true true
	// 5xx server error: true after 3 attempts
	// invalid input: true Score
	// unreachable: true
	// deadline: true
}

// A support ticket needs the request id of the failed call: APIError carries
// it, and WithResponseInfo gives it, with the status and the number of
// attempts, for calls that succeed too.
func ExampleWithResponseInfo() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	var info apala.ResponseInfo
	fb := apala.Feedback{MessageID: "msg-0001", Score: apala.ScoreGood}
	if _, err := c.SubmitFeedback(ctx, fb, apala.WithResponseInfo(&info)); err != nil {
		log.Fatal(err)
	}
	fmt.Println("status:", info.StatusCode, "attempts:", info.Attempts, "request id:", info.RequestID)

	srv.Fail("/api/feedback", http.StatusUnprocessableEntity, "message_id is unknown")
	_, err = c.SubmitFeedback(ctx, fb, apala.WithResponseInfo(&info))
	var apiErr *apala.APIError
	if errors.As(err, &apiErr) {
		fmt.Printf("ticket: %s %s answered %d %q, request id %s\n", apiErr.Method, apiErr.Path, apiErr.StatusCode, apiErr.Message, apiErr.RequestID)
	}
	fmt.Println(err)
	// Output:
	// status: 200 attempts: 1 request id: req-0002
	// ticket: POST /api/feedback answered 422 "message_id is unknown", request id req-0003
	// apala: POST /api/feedback: 422 Unprocessable Entity: message_id is unknown (request id req-0003)
}

// Options on a call apply to that call alone: an optimizer call on a user's
// request path that must not wait, and a feedback call that a restarted
// worker resends with the same idempotency key, so that it is stored once.
func ExampleWithIdempotencyKey() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	srv.Fail("/api/message_optimizer", http.StatusServiceUnavailable, "maintenance")
	_, err = c.OptimizeMessage(ctx,
		apala.MessageRequest{CustomerID: customer, Candidate: apala.Message{Content: "Hello."}},
		apala.WithMaxRetries(0), apala.WithTimeout(2*time.Second))
	fmt.Println("no retry:", errors.Is(err, apala.ErrServer), srv.Requests("/api/message_optimizer"), "attempt")

	fb := apala.Feedback{MessageID: "msg-0001", Score: apala.ScoreGood}
	key := apala.WithIdempotencyKey("worker-7/job-1234") // saved with the job
	first, err := c.SubmitFeedback(ctx, fb, key)
	if err != nil {
		log.Fatal(err)
	}
	again, err := c.SubmitFeedback(ctx, fb, key) // after a restart
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ids:", first.ID, again.ID, "stored:", len(srv.Feedback()))
	// Output:
	// no retry: true 1 attempt
	// ids: fb-0001 fb-0001 stored: 1
}

// Metrics and traces through hooks: the client reports every HTTP attempt
// and every token request, with the caller's context. This one counts them
// in a map; see the README for the same hooks feeding Prometheus or
// OpenTelemetry.
func ExampleWithHooks() {
	var (
		mu     sync.Mutex
		counts = map[string]int{}
	)
	count := func(k string) { mu.Lock(); counts[k]++; mu.Unlock() }
	hooks := apala.Hooks{
		Attempt: func(ctx context.Context, a apala.AttemptInfo) {
			count(fmt.Sprintf("attempt %s %d", a.Path, a.StatusCode))
			if a.RetryIn > 0 {
				count("retry scheduled")
			}
		},
		Token: func(ctx context.Context, t apala.TokenInfo) {
			switch {
			case t.Err != nil:
				count("token request failed")
			case t.Refresh:
				count("token refreshed")
			default:
				count("api key exchanged")
			}
		},
	}
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient(apala.WithHooks(hooks))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	srv.Fail("/api/feedback", http.StatusServiceUnavailable, "maintenance")
	if _, err := c.SubmitFeedback(ctx, apala.Feedback{MessageID: "msg-0001", Score: apala.ScoreGood}); err != nil {
		log.Fatal(err)
	}
	if _, err := c.RefreshAccessToken(ctx); err != nil {
		log.Fatal(err)
	}
	// A token request is reported once it ended, without holding up its
	// callers; Close waits for those reports.
	c.Close()
	mu.Lock()
	defer mu.Unlock()
	var keys []string
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Println(k, counts[k])
	}
	// Output:
	// api key exchanged 1
	// attempt /api/auth/refresh 200 1
	// attempt /api/auth/token 200 1
	// attempt /api/feedback 200 1
	// attempt /api/feedback 503 1
	// retry scheduled 1
	// token refreshed 1
}

// Rotating the API key without a restart: the client asks the function for
// the key at every exchange, so that a key rotated in the secret store is
// picked up. secretKey stands for a secret manager.
func ExampleWithAPIKeyFunc() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	var asked int
	secretKey := func(ctx context.Context) (string, error) {
		asked++ // a real one reads the secret store, with ctx
		return apala.FakeAPIKey, nil
	}
	c, err := srv.NewClient(apala.WithAPIKeyFunc(secretKey)) // in yours: apala.NewClient("", apala.WithAPIKeyFunc(secretKey), ...)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	if _, err := c.SubmitFeedback(ctx, apala.Feedback{MessageID: "msg-0001", Score: apala.ScoreGood}); err != nil {
		log.Fatal(err)
	}
	fmt.Println("key asked:", asked)

	// The server revokes every token (as after a key rotation): the refresh
	// is refused, and the key is asked for again.
	srv.RevokeTokens()
	if _, err := c.SubmitFeedback(ctx, apala.Feedback{MessageID: "msg-0001", Score: apala.ScoreGood}); err != nil {
		log.Fatal(err)
	}
	fmt.Println("key asked:", asked)
	// Output:
	// key asked: 1
	// key asked: 2
}

// Sharing one token between clients, and between processes: the second
// client takes the token the first saved, with no token request of its own.
// NewFileTokenStore does the same across processes on one host; memoryStore
// stands for a store of yours (Redis, a database) across hosts.
func ExampleWithTokenStore() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	store := &memoryStore{}      // or apala.NewFileTokenStore("/var/run/myservice/apala-token.json")
	ctx := context.Background()

	first, err := srv.NewClient(apala.WithTokenStore(store))
	if err != nil {
		log.Fatal(err)
	}
	defer first.Close()
	if _, err := first.AccessToken(ctx); err != nil {
		log.Fatal(err)
	}

	second, err := srv.NewClient(apala.WithTokenStore(store)) // a restart, or another worker
	if err != nil {
		log.Fatal(err)
	}
	defer second.Close()
	if _, err := second.SubmitFeedback(ctx, apala.Feedback{MessageID: "msg-0001", Score: apala.ScoreGood}); err != nil {
		log.Fatal(err)
	}
	fmt.Println("token requests:", srv.Requests("/api/auth/token"))
	fmt.Println("same token:", first.Token().AccessToken == second.Token().AccessToken)
	fmt.Println("stored:", store.saved) // prints redacted
	// Output:
	// token requests: 1
	// same token: true
	// stored: apala.StoredToken{access_token:[REDACTED] refresh_token:[REDACTED] token_type:Bearer issued_at:... expires_at:... company_id:550e8400-e29b-41d4-a716-446655440000 company_name:Acme Lending key_id:...}
}

// memoryStore is an apala.TokenStore in memory. A store shared by hosts has
// the same two methods over Redis or a database; a Lock method (a SET NX
// with an expiry) makes it an apala.TokenLocker too.
type memoryStore struct {
	mu    sync.Mutex
	token *apala.StoredToken
	saved string // what was saved, printed, with the changing parts elided
}

func (s *memoryStore) Load(ctx context.Context) (*apala.StoredToken, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.token, nil
}

func (s *memoryStore) Save(ctx context.Context, t *apala.StoredToken) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token = t
	shown := *t
	shown.IssuedAt, shown.ExpiresAt, shown.KeyID = time.Time{}, time.Time{}, ""
	s.saved = strings.NewReplacer("0001-01-01 00:00:00 +0000 UTC", "...", "key_id:}", "key_id:...}").Replace(fmt.Sprint(shown))
	return nil
}

// Debug logging through log/slog. Nothing is logged without WithLogger, and
// no record ever holds the API key or a token.
func ExampleWithLogger() {
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
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient(apala.WithLogger(logger))
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
	// level=DEBUG msg="apala: http attempt" method=POST path=/api/auth/token status=200 attempt=1 request_id=req-0001
	// level=INFO msg="apala: authenticated" company_id=550e8400-e29b-41d4-a716-446655440000 company_name="Acme Lending" expires_in=1h0m0s
	// level=DEBUG msg="apala: http attempt" method=POST path=/api/feedback status=200 attempt=1 request_id=req-0002
	// level=DEBUG msg="apala: http attempt" method=POST path=/api/feedback status=401 attempt=1 request_id=req-0003
	// level=DEBUG msg="apala: http attempt" method=POST path=/api/auth/refresh status=401 attempt=1 request_id=req-0004
	// level=WARN msg="apala: refresh refused; exchanging the API key" status=401
	// level=DEBUG msg="apala: http attempt" method=POST path=/api/auth/token status=200 attempt=1 request_id=req-0005
	// level=INFO msg="apala: authenticated" company_id=550e8400-e29b-41d4-a716-446655440000 company_name="Acme Lending" expires_in=1h0m0s
	// level=DEBUG msg="apala: http attempt" method=POST path=/api/feedback status=200 attempt=2 request_id=req-0006
}

// The production pattern: one client per process, created at start-up,
// shared by every goroutine, closed at shutdown. However many goroutines
// call at once, the API key is exchanged once.
func Example_production() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient(     // in yours: apala.NewClient(key, apala.WithBaseURL(...), apala.WithCompanyGUID(...), ...)
		apala.WithMaxRetries(3), // transient failures: 4 attempts in all
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
	fmt.Println("calls:", srv.Requests("/api/feedback"), "failed:", failed)
	fmt.Println("API-key exchanges:", srv.Requests("/api/auth/token"))
	// Output:
	// calls: 50 failed: 0
	// API-key exchanges: 1
}

// Do sends a call this package does not wrap, with the same token handling,
// retries and error types as the rest.
func ExampleClient_Do() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	in := map[string]any{"message_id": "m-1", "customer_responded": true, "score": "good"}
	var out struct {
		ID        string `json:"id"`
		MessageID string `json:"message_id"`
		Score     string `json:"score"`
	}
	if err := c.Do(context.Background(), http.MethodPost, "/api/feedback", in, &out); err != nil {
		log.Fatal(err)
	}
	fmt.Println(out.ID, out.MessageID, out.Score)

	err = c.Do(context.Background(), http.MethodPost, "/api/no_such_call", in, nil)
	fmt.Println(err)
	// Output:
	// fb-0001 m-1 good
	// apala: POST /api/no_such_call: 404 Not Found: no such endpoint (request id req-0003)
}

// HTTPClient hands an *http.Client to code that builds its own requests:
// it sends the bearer token to the Apala origin only, and renews it when the
// server answers 401.
func ExampleClient_HTTPClient() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	hc := c.HTTPClient()
	body := strings.NewReader(`{"message_id":"m-1","customer_responded":false,"score":"bad"}`)
	// The client's base URL: DefaultBaseURL for a FakeServer's client.
	req, err := http.NewRequest(http.MethodPost, apala.DefaultBaseURL+"/api/feedback", body)
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
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()    // in yours, name the company: apala.WithCompanyGUID(...)
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
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	repeat := true
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
	// id: msg-0001
	// original: Your new offer is ready.
	// optimized: Your new offer is ready - reply YES and we will call you today.
	// channel: SMS
}

// SubmitFeedback reports how one message fared.
func ExampleClient_SubmitFeedback() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()
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
	fmt.Println("stored:", !fb.InsertedAt.IsZero())
	// Output:
	// fb-0001 msg-0003 good [signing_loan_agreement]
	// replied after: 12m0s
	// stored: true
}

// SubmitFeedbackBulk reports many outcomes in one call. The answer is never
// silently partial: fewer entries stored than sent is an error matching
// ErrPartial, returned with the server's answer.
func ExampleClient_SubmitFeedbackBulk() {
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	res, err := c.SubmitFeedbackBulk(context.Background(), []apala.Feedback{
		{MessageID: "msg-0001", CustomerResponded: true, Score: apala.ScoreGood},
		{MessageID: "msg-0002", Score: apala.ScoreBad},
		{MessageID: "msg-0003", Score: apala.ScoreNeutral},
	})
	if errors.Is(err, apala.ErrPartial) {
		log.Printf("only %d of 3 stored: %v", res.Count, err)
	} else if err != nil {
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
	srv := apala.NewFakeServer() // stands in for your Apala endpoint
	c, err := srv.NewClient()
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
	// feedback fb-0001 for msg-0001 scored good
}
