package apala

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestWaiterSharesExplicitFlightError: a caller that needs a token while an
// Authenticate is in flight shares that flight's failure, or meets the
// cooldown it started: one token request in all.
func TestWaiterSharesExplicitFlightError(t *testing.T) {
	s, c := setup(t)
	s.Fail(pathToken, 401, `{"error":"invalid API key"}`)
	release := s.hold(t, pathToken)
	authErr := make(chan error, 1)
	go func() { _, err := c.Authenticate(ctx); authErr <- err }()
	for s.Hits(pathToken) == 0 {
		time.Sleep(time.Millisecond)
	}
	tokErr := make(chan error, 1)
	go func() { _, err := c.AccessToken(ctx); tokErr <- err }()
	release()
	if err := <-authErr; !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Authenticate() error = %v; want ErrUnauthorized", err)
	}
	if err := <-tokErr; !errors.Is(err, ErrUnauthorized) {
		t.Errorf("AccessToken() error = %v; want the flight's ErrUnauthorized", err)
	}
	if got := s.Hits(pathToken); got != 1 {
		t.Errorf("token requests = %d; want 1", got)
	}
}

// TestExplicitFailureStartsCooldown: a failed Authenticate starts the
// failure cooldown like an automatic flight, and the error served from it
// says that nothing was sent.
func TestExplicitFailureStartsCooldown(t *testing.T) {
	clk := useFakeClock(t)
	s, c := setup(t)
	s.Fail(pathToken, 401, `{"error":"invalid API key"}`)
	if _, err := c.Authenticate(ctx); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("Authenticate() error = %v; want ErrUnauthorized", err)
	}
	for i := 0; i < 5; i++ {
		_, err := c.AccessToken(ctx)
		var ae *APIError
		if !errors.Is(err, ErrUnauthorized) || !errors.As(err, &ae) || ae.StatusCode != 401 {
			t.Fatalf("AccessToken() #%d error = %v; want the cached 401", i, err)
		}
		const want = "(cached: no new token request until 2025-01-15T10:00:01Z)"
		if !strings.HasSuffix(err.Error(), want) {
			t.Fatalf("AccessToken() #%d error = %q; want it to end %q", i, err, want)
		}
	}
	if got := s.Hits(pathToken); got != 1 {
		t.Fatalf("token requests during the cooldown = %d; want 1", got)
	}
	clk.Advance(time.Second)
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatalf("AccessToken() after the cooldown: %v", err)
	}
	if got := s.Hits(pathToken); got != 2 {
		t.Errorf("token requests = %d; want 2", got)
	}
}

// TestRefusedExplicitRefresh: a refresh the server refuses is returned as
// is, starts no cooldown, and drops the refresh token, so that the
// automatic path goes straight to the API key.
func TestRefusedExplicitRefresh(t *testing.T) {
	s, c := setup(t)
	if _, err := c.Authenticate(ctx); err != nil {
		t.Fatal(err)
	}
	s.Fail(pathRefresh, 401, `{"error":"invalid refresh token"}`)
	if _, err := c.RefreshAccessToken(ctx); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("RefreshAccessToken() error = %v; want ErrUnauthorized", err)
	}
	if _, err := c.RefreshAccessToken(ctx); !errors.Is(err, ErrNotAuthenticated) {
		t.Fatalf("second RefreshAccessToken() error = %v; want ErrNotAuthenticated", err)
	}
	c.reject(c.pair.Load())
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatalf("AccessToken() after a refused refresh: %v", err)
	}
	if got, want := [2]int{s.Hits(pathRefresh), s.Hits(pathToken)}, [2]int{1, 2}; got != want {
		t.Errorf("refresh and token requests = %v; want %v", got, want)
	}
}

// nilCtx is a nil context the linters cannot see through.
var nilCtx context.Context

// TestNilContext: a nil context is an error from every method that takes
// one, never a panic, and sends nothing.
func TestNilContext(t *testing.T) {
	s, c := setup(t)
	calls := map[string]func() error{
		"AccessToken":        func() error { _, err := c.AccessToken(nilCtx); return err },
		"Authenticate":       func() error { _, err := c.Authenticate(nilCtx); return err },
		"RefreshAccessToken": func() error { _, err := c.RefreshAccessToken(nilCtx); return err },
		"Do":                 func() error { return c.Do(nilCtx, "POST", "/api/feedback", nil, nil) },
		"ProcessMessage":     func() error { _, err := c.ProcessMessage(nilCtx, conversation()); return err },
		"OptimizeMessage":    func() error { _, err := c.OptimizeMessage(nilCtx, conversation()); return err },
		"SubmitFeedback": func() error {
			_, err := c.SubmitFeedback(nilCtx, Feedback{MessageID: "m", Score: ScoreGood})
			return err
		},
		"SubmitFeedbackBulk": func() error {
			_, err := c.SubmitFeedbackBulk(nilCtx, []Feedback{{MessageID: "m", Score: ScoreGood}})
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			if err := call(); !errors.Is(err, errNilContext) {
				t.Errorf("%s(nil) error = %v; want %v", name, err, errNilContext)
			}
		})
	}
	if got := s.totalHits(); got != 0 {
		t.Errorf("requests = %d; want 0", got)
	}
}

// TestFailedBackgroundRefreshLogsWarn: a refresh that fails in the
// background, where no caller sees its error, is logged once at Warn.
func TestFailedBackgroundRefreshLogsWarn(t *testing.T) {
	clk := useFakeClock(t)
	var logs logBuffer
	s, c := setup(t, WithMaxRetries(0),
		WithLogger(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	s.Fail(pathRefresh, 503, `{"error":"maintenance"}`)
	clk.Advance(time.Hour - 30*time.Second) // inside the margin, before the leeway
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatalf("AccessToken() in the stale window: %v", err)
	}
	waitIdle(t, c)
	var warns []map[string]any
	for _, r := range logs.records(t) {
		if r["level"] == "WARN" {
			warns = append(warns, r)
		}
	}
	if len(warns) != 1 || warns[0]["msg"] != "apala: token request failed" {
		t.Fatalf("Warn records = %v; want one \"apala: token request failed\"", warns)
	}
	if e, _ := warns[0]["error"].(string); !strings.Contains(e, "503") {
		t.Errorf("logged error = %q; want the 503", e)
	}
	noSecret(t, "log output", logs.String())
}

// TestNestedValuesRedacted: the types holding a secret stay redacted inside
// slices and maps, through slog's JSON and text handlers and json.Marshal.
func TestNestedValuesRedacted(t *testing.T) {
	tok := Token{AccessToken: "tok-SECRET-1", TokenType: "Bearer", ExpiresAt: time.Date(2025, 1, 15, 11, 0, 0, 0, time.UTC), CompanyName: "Acme"}
	ar := AuthResponse{AccessToken: "tok-SECRET-2", RefreshToken: "ref-SECRET-3", ExpiresIn: 3600, CompanyName: "Acme"}
	rr := RefreshResponse{AccessToken: "tok-SECRET-4", ExpiresIn: 3600}
	values := map[string]any{
		"[]Token": []Token{tok}, "[]*Token": []*Token{&tok}, "map[string]Token": map[string]Token{"t": tok},
		"[]AuthResponse": []AuthResponse{ar}, "[]*AuthResponse": []*AuthResponse{&ar}, "map[string]AuthResponse": map[string]AuthResponse{"a": ar},
		"[]RefreshResponse": []RefreshResponse{rr}, "[]*RefreshResponse": []*RefreshResponse{&rr}, "map[string]*RefreshResponse": map[string]*RefreshResponse{"r": &rr},
	}
	for name, v := range values {
		t.Run(name, func(t *testing.T) {
			for _, h := range []struct {
				name string
				new  func(*bytes.Buffer) slog.Handler
			}{
				{"json", func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) }},
				{"text", func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) }},
			} {
				var b bytes.Buffer
				slog.New(h.new(&b)).Info("values", slog.Any("v", v))
				noSecret(t, h.name+" handler output", b.String())
				if !strings.Contains(b.String(), "[REDACTED]") {
					t.Errorf("%s handler output does not say [REDACTED]", h.name)
				}
			}
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("json.Marshal: %v", err)
			}
			noSecret(t, "json.Marshal output", string(b))
			noSecret(t, "fmt output", fmt.Sprintf("%v %+v %#v", v, v, v))
		})
	}
	b, _ := json.Marshal(tok)
	if want := `{"access_token":"[REDACTED]","token_type":"Bearer","expires_at":"2025-01-15T11:00:00Z","company_id":"","company_name":"Acme"}`; string(b) != want {
		t.Errorf("json.Marshal(Token) = %s; want %s", b, want)
	}
}

// TestCompanyTextScrubbed: a server that puts a secret into the company name
// cannot have it printed with the Token or logged.
func TestCompanyTextScrubbed(t *testing.T) {
	var logs logBuffer
	s, c := setup(t, WithLogger(newJSONLogger(&logs)))
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != pathToken {
			return false
		}
		writeJSON(w, 200, map[string]any{"access_token": "acc-SECRET-0123456789", "refresh_token": "ref-SECRET-0123456789",
			"expires_in": 3600, "company_id": "ref-SECRET-0123456789", "company_name": "Acme " + DemoAPIKey})
		return true
	})
	if _, err := c.Authenticate(ctx); err != nil {
		t.Fatal(err)
	}
	noSecret(t, "Token", fmt.Sprint(c.Token()))
	noSecret(t, "log output", logs.String())
	if got := c.Token().CompanyName; got != "Acme [REDACTED]" {
		t.Errorf("CompanyName = %q; want %q", got, "Acme [REDACTED]")
	}
}
