package apala

// This file holds the tests of the token lifecycle (auth.go), in the order
// of that file: authentication and the explicit token calls, printing
// without secrets, the token pair, the lazy lifecycle (fresh, stale,
// invalid), flights, the failure cooldown, a 401's token side, Close's
// flight half, and token stores. Their helpers are at the top of
// apala_test.go.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ---- authentication and the explicit token calls ----

func TestAuthenticate(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	s, c := setup(t)
	sentAt := clk.Now()
	// The answer arrives 5s after the request left: expiry counts from the send.
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		clk.Advance(5 * time.Second)
		return false
	})
	ar, err := c.Authenticate(ctx)
	if err != nil {
		t.Fatalf("Authenticate() error = %v", err)
	}
	if got, want := string(s.lastBody(pathToken)), `{"api_key":"`+FakeAPIKey+`"}`; got != want {
		t.Errorf("token request body differs from {\"api_key\": <key>} (body withheld)")
	}
	if h := s.lastHeader(pathToken); h.Get("Authorization") != "" || h.Get("Content-Type") != "application/json" {
		t.Errorf("token request: Authorization set = %v, Content-Type = %q; want none, application/json", h.Get("Authorization") != "", h.Get("Content-Type"))
	}
	if ar.CompanyName != fakeCompanyName || ar.CompanyID != FakeCompanyGUID || !ar.Valid() || ar.TokenType != "Bearer" {
		t.Errorf("Authenticate() = %v; want company %q, valid, Bearer", ar, fakeCompanyName)
	}
	if ar.AccessToken == "" || c.pair.Load().refresh == "" {
		t.Errorf("Authenticate() returned empty tokens")
	}
	tok := c.Token()
	if tok.AccessToken != ar.AccessToken {
		t.Errorf("Token().AccessToken differs from the one authenticated")
	}
	if want := sentAt.Add(time.Hour); !tok.ExpiresAt.Equal(want) {
		t.Errorf("Token().ExpiresAt = %v; want %v (send time + expires_in)", tok.ExpiresAt, want)
	}
	if !tok.Valid() || tok.CompanyName != fakeCompanyName || tok.TokenType != "Bearer" {
		t.Errorf("Token() = %v; want valid, company %q", tok, fakeCompanyName)
	}
	clk.Advance(time.Hour)
	if c.Token().Valid() || !tok.Valid() {
		t.Errorf("after ExpiresAt: Token().Valid() = %v, the earlier snapshot's = %v; want false, true (as when taken)", c.Token().Valid(), tok.Valid())
	}
	if (Token{}).Valid() {
		t.Errorf("Token{}.Valid() = true; want false")
	}
	if (Token{AccessToken: "x"}).Valid() != true {
		t.Errorf("Token with unknown expiry: Valid() = false; want true")
	}
}

func TestAuthenticateErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		status  int
		body    string
		is      error
		wantMsg string // in the error
	}{
		{"invalid key", 401, `{"error":"invalid API key"}`, ErrUnauthorized, "invalid API key"},
		{"no permission", 403, `{"message":"key lacks permissions"}`, ErrForbidden, "key lacks permissions"},
		{"server", 500, `{"errors":{"detail":"Internal Server Error"}}`, ErrServer, "Internal Server Error"},
		{"html page", 502, `<html><body>Bad gateway ` + secretMarker + `</body></html>`, ErrServer, "text/html"},
		{"no access token", 200, `{"refresh_token":"r","expires_in":3600}`, nil, "no valid access_token"},
		{"empty access token", 200, `{"access_token":"","expires_in":3600}`, nil, "no valid access_token"},
		{"header injection", 200, `{"access_token":"a\r\nX-Evil: 1","expires_in":3600}`, nil, "no valid access_token"},
		{"malformed", 200, `{"access_token":`, nil, "malformed JSON"},
		{"wrong type", 200, `{"access_token":42,"expires_in":3600}`, nil, "malformed JSON"},
		{"empty body", 200, ``, nil, "empty body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := setup(t, WithMaxRetries(0))
			s.script(pathToken, tt.status, tt.body, nil)
			ar, err := c.Authenticate(ctx)
			if err == nil || ar != (Token{}) {
				t.Fatalf("Authenticate() = %v, %v; want an error", ar, err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) || !strings.HasPrefix(err.Error(), "apala: ") {
				t.Errorf("Authenticate() error = %q; want it to contain %q", err, tt.wantMsg)
			}
			noSecret(t, "error", err.Error())
			if tok := c.Token(); tok.AccessToken != "" {
				t.Errorf("a token was stored from a bad answer")
			}
		})
	}
}

// TestExpiresInIntegralFloat: expires_in sent as 3600.0 is read as an hour,
// from the token and the refresh endpoints.
func TestExpiresInIntegralFloat(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	s, c := setup(t)
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		case pathToken:
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"access_token":"a.b.c","refresh_token":"r-1","expires_in":3600.0}`)
		case pathRefresh:
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"access_token":"d.e.f","expires_in":1.8e3}`)
		default:
			return false
		}
		return true
	})
	ar, err := c.Authenticate(ctx)
	if err != nil || !ar.ExpiresAt.Equal(clk.Now().Add(time.Hour)) {
		t.Fatalf("Authenticate() = %v, %v; want it to expire in 3600s", ar, err)
	}
	if got, want := c.Token().ExpiresAt, clk.Now().Add(time.Hour); !got.Equal(want) {
		t.Errorf("ExpiresAt = %v; want %v", got, want)
	}
	rr, err := c.RefreshAccessToken(ctx)
	if err != nil || !rr.ExpiresAt.Equal(clk.Now().Add(30*time.Minute)) {
		t.Fatalf("RefreshAccessToken() = %v, %v; want it to expire in 1800s", rr, err)
	}
}

// TestCompanyTextScrubbed: a server that puts a secret into the company name
// cannot have it printed with the Token or logged.
func TestCompanyTextScrubbed(t *testing.T) {
	ctx := context.Background()
	var logs logBuffer
	s, c := setup(t, WithLogger(newJSONLogger(&logs)))
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != pathToken {
			return false
		}
		writeJSON(w, 200, map[string]any{"access_token": "acc-SECRET-0123456789", "refresh_token": "ref-SECRET-0123456789",
			"expires_in": 3600, "company_id": "ref-SECRET-0123456789", "company_name": "Acme " + FakeAPIKey})
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

func TestRefreshAccessToken(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	if _, err := c.RefreshAccessToken(ctx); !errors.Is(err, ErrNotAuthenticated) {
		t.Errorf("RefreshAccessToken() before auth: error = %v; want ErrNotAuthenticated", err)
	}
	if n := s.Requests(pathRefresh) + s.Requests(pathToken); n != 0 {
		t.Errorf("requests sent with no refresh token = %d; want 0", n)
	}
	ar, err := c.Authenticate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	refresh := c.pair.Load().refresh
	rr, err := c.RefreshAccessToken(ctx)
	if err != nil {
		t.Fatalf("RefreshAccessToken() error = %v", err)
	}
	if rr.AccessToken == "" || rr.AccessToken == ar.AccessToken || !rr.Valid() || rr.CompanyID != FakeCompanyGUID {
		t.Errorf("RefreshAccessToken() = %v; want a new valid token of the company", rr)
	}
	if got, want := string(s.lastBody(pathRefresh)), `{"refresh_token":"`+refresh+`"}`; got != want {
		t.Errorf("refresh request body differs from {\"refresh_token\": <token>} (body withheld)")
	}
	if s.lastHeader(pathRefresh).Get("Authorization") != "" {
		t.Errorf("refresh request carries an Authorization header")
	}
	if c.Token().AccessToken != rr.AccessToken || c.Token().CompanyName != fakeCompanyName {
		t.Errorf("Token() after refresh is not the refreshed one, or lost the company")
	}
	// The old refresh token is kept: a second refresh uses it again.
	if _, err := c.RefreshAccessToken(ctx); err != nil {
		t.Fatalf("second RefreshAccessToken() error = %v", err)
	}
	if got, want := string(s.lastBody(pathRefresh)), `{"refresh_token":"`+refresh+`"}`; got != want {
		t.Errorf("second refresh did not reuse the original refresh token")
	}

	// Rotation: a returned refresh token replaces the old one.
	s.RotateRefreshTokens(true)
	if _, err := c.RefreshAccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	rotated := c.pair.Load().refresh
	if rotated == refresh {
		t.Fatalf("rotated refresh token not adopted")
	}
	if _, err := c.RefreshAccessToken(ctx); err != nil {
		t.Fatalf("refresh with the rotated token: %v", err)
	}

	// Refused: the explicit call returns the error and does not fall back.
	s.Fail(pathRefresh, 401, "refresh token expired")
	before := s.Requests(pathToken)
	if _, err := c.RefreshAccessToken(ctx); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("refused RefreshAccessToken() error = %v; want ErrUnauthorized", err)
	}
	if s.Requests(pathToken) != before {
		t.Errorf("explicit refresh fell back to the API key")
	}
}

// TestRefusedExplicitRefresh: a refresh the server refuses is returned as
// is, starts no cooldown, and drops the refresh token, so that the
// automatic path goes straight to the API key.
func TestRefusedExplicitRefresh(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	if _, err := c.Authenticate(ctx); err != nil {
		t.Fatal(err)
	}
	s.Fail(pathRefresh, 401, "invalid refresh token")
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
	if got, want := [2]int{s.Requests(pathRefresh), s.Requests(pathToken)}, [2]int{1, 2}; got != want {
		t.Errorf("refresh and token requests = %v; want %v", got, want)
	}
}

// TestAPIKeyFunc: the key comes from the function at every exchange, a 401
// gets one more try with a rotated key, the function's error fails the
// flight, and every key it returned is scrubbed.
func TestAPIKeyFunc(t *testing.T) {
	ctx := context.Background()
	var (
		mu    sync.Mutex
		key   = FakeAPIKey
		fnErr error
		calls int
	)
	fn := func(context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		return key, fnErr
	}
	s := startServer(t)
	c, err := NewClient("", WithBaseURL(s.URL), WithAPIKeyFunc(fn), WithRetryBackoff(time.Millisecond, time.Millisecond))
	if err != nil {
		t.Fatalf("NewClient(\"\", WithAPIKeyFunc(fn)) error = %v; want nil", err)
	}
	defer c.Close()
	if _, err := c.Authenticate(ctx); err != nil || calls != 1 {
		t.Fatalf("Authenticate(): %v after %d calls of fn; want success after 1", err, calls)
	}
	// Rotation at the server: the old key is refused; fn now returns the
	// new one, so the exchange after the 401 succeeds.
	const rotated = "rotated-SECRET-key-2"
	s.setKnobs(func() { s.apiKey = rotated })
	mu.Lock()
	calls = 0
	mu.Unlock()
	rotate := s.hold(t, pathToken)
	done := make(chan error, 1)
	go func() { _, err := c.Authenticate(ctx); done <- err }()
	for s.Requests(pathToken) < 2 {
		time.Sleep(time.Millisecond)
	}
	mu.Lock()
	key = rotated
	mu.Unlock()
	rotate()
	if err := recv(t, done, "done"); err != nil || calls != 2 || s.Requests(pathToken) != 3 {
		t.Fatalf("Authenticate() after a rotation: %v after %d calls of fn and %d exchanges; want success after 2 and 3", err, calls, s.Requests(pathToken))
	}
	// An error from fn fails the token request, sending nothing.
	mu.Lock()
	fnErr = errors.New("vault sealed")
	mu.Unlock()
	before := s.Requests(pathToken)
	_, err = c.Authenticate(ctx)
	if err == nil || !strings.HasPrefix(err.Error(), "apala: API key: vault sealed") || s.Requests(pathToken) != before {
		t.Fatalf("Authenticate() with fn failing = %v; want apala: API key: vault sealed, nothing sent", err)
	}
	// Both keys are scrubbed from server text.
	mu.Lock()
	fnErr = nil
	mu.Unlock()
	s.Fail("/api/feedback", 400, "keys "+FakeAPIKey+" and "+rotated)
	err = c.Do(ctx, "POST", "/api/feedback", map[string]int{}, nil)
	if err == nil || secretRun(err.Error(), FakeAPIKey, rotated) != "" {
		t.Errorf("an error echoing both keys kept a part of one (withheld)")
	}
	noSecret(t, "client", fmt.Sprintf("%v %+v %#v", c, c, c))
	// NewClientFromEnv does not need APALA_API_KEY with a key function.
	t.Setenv(EnvAPIKey, "")
	if c2, err := NewClientFromEnv(WithAPIKeyFunc(fn)); err != nil {
		t.Errorf("NewClientFromEnv(WithAPIKeyFunc) without %s: %v", EnvAPIKey, err)
	} else {
		c2.Close()
	}
}

// TestKeyRotationUnderLoad: 16 goroutines call while the key is rotated at
// the server and in the secret store; the client moves to the new key with
// one more exchange, and no call fails.
func TestKeyRotationUnderLoad(t *testing.T) {
	ctx := context.Background()
	var key atomic.Value
	key.Store(FakeAPIKey)
	var asked atomic.Int32
	fn := func(context.Context) (string, error) { asked.Add(1); return key.Load().(string), nil }
	s, c := setup(t, WithAPIKeyFunc(fn))
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	const rotated = "rotated-SECRET-key-3"
	var failed, calls atomic.Int32
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				calls.Add(1)
				if _, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}); err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	for calls.Load() < 200 {
		time.Sleep(time.Millisecond)
	}
	// The rotation: the store gets the new key, the server drops the old
	// one and every token issued with it.
	key.Store(rotated)
	// The key first: a client refused by the revocation then exchanges
	// the new key, never the new key with a server still on the old one.
	s.setKnobs(func() { s.apiKey = rotated })
	s.RevokeTokens()
	before := calls.Load()
	for calls.Load() < before+400 {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("calls %d, failed %d, exchanges %d, refreshes %d, keys asked %d", calls.Load(), failed.Load(), s.Requests(pathToken), s.Requests(pathRefresh), asked.Load())
	if failed.Load() != 0 {
		t.Errorf("failed calls = %d; want 0", failed.Load())
	}
	if n := s.Requests(pathToken); n != 2 {
		t.Errorf("exchanges = %d; want 2 (the first and one with the new key)", n)
	}
}

// ---- printing without secrets ----

// TestNestedValuesRedacted: the types holding a secret stay redacted inside
// slices and maps, through slog's JSON and text handlers and json.Marshal.
func TestNestedValuesRedacted(t *testing.T) {
	tok := Token{AccessToken: "tok-SECRET-1", TokenType: "Bearer", ExpiresAt: time.Date(2025, 1, 15, 11, 0, 0, 0, time.UTC), CompanyName: "Acme"}
	info := TokenInfo{Token: tok}
	values := map[string]any{
		"[]Token": []Token{tok}, "[]*Token": []*Token{&tok}, "map[string]Token": map[string]Token{"t": tok},
		"[]TokenInfo": []TokenInfo{info}, "map[string]TokenInfo": map[string]TokenInfo{"i": info},
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

// ---- the token pair ----

func TestNewPairDeadlines(t *testing.T) {
	base := time.Date(2025, 1, 15, 10, 0, 0, 0, time.UTC)
	const never = time.Duration(1<<63 - 1)
	const tenYears = 10 * 365 * 24 * time.Hour // the cap on a lifetime, literal
	tests := []struct {
		name          string
		margin        time.Duration
		access        string
		expiresIn     int
		sent          time.Duration
		wantStale     time.Duration
		wantInvalid   time.Duration
		wantExpiresAt time.Time
	}{
		{"hour", DefaultRefreshMargin, "a", 3600, 0, 3540 * time.Second, 3590 * time.Second, base.Add(time.Hour)},
		{"sent later", DefaultRefreshMargin, "a", 3600, 7 * time.Second, 3547 * time.Second, 3597 * time.Second, base.Add(time.Hour)},
		{"two minutes", DefaultRefreshMargin, "a", 120, 0, 60 * time.Second, 110 * time.Second, base.Add(2 * time.Minute)},
		{"margin capped at half", DefaultRefreshMargin, "a", 60, 0, 30 * time.Second, 60*time.Second - 7500*time.Millisecond, base.Add(time.Minute)},
		{"short", DefaultRefreshMargin, "a", 2, 0, time.Second, 1750 * time.Millisecond, base.Add(2 * time.Second)},
		{"zero margin", 0, "a", 3600, 0, time.Hour, time.Hour, base.Add(time.Hour)},
		{"jwt exp", DefaultRefreshMargin, jwtExpiring(base.Add(30 * time.Minute)), 0, 0, 29 * time.Minute, 1790 * time.Second, base.Add(30 * time.Minute)},
		{"jwt exp, negative expires_in", DefaultRefreshMargin, jwtExpiring(base.Add(30 * time.Minute)), -5, 0, 29 * time.Minute, 1790 * time.Second, base.Add(30 * time.Minute)},
		{"jwt already expired", DefaultRefreshMargin, jwtExpiring(base.Add(-time.Minute)), 0, 0, never, never, time.Time{}},
		{"opaque token", DefaultRefreshMargin, "opaque", 0, 0, never, never, time.Time{}},
		{"absurd expires_in", DefaultRefreshMargin, "a", 1 << 62, 0, tenYears - time.Minute, tenYears - 10*time.Second, base.Add(tenYears)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Client{cfg: config{margin: tt.margin}, baseTime: base.Add(-tt.sent)}
			p := c.newPair(tt.access, "r", "", tt.expiresIn, base)
			if p.staleAt != tt.wantStale || p.invalidAt != tt.wantInvalid {
				t.Errorf("staleAt, invalidAt = %v, %v; want %v, %v", p.staleAt, p.invalidAt, tt.wantStale, tt.wantInvalid)
			}
			if !p.expiresAt.Equal(tt.wantExpiresAt) {
				t.Errorf("expiresAt = %v; want %v", p.expiresAt, tt.wantExpiresAt)
			}
			if p.tokenType != "Bearer" || p.bearer[0] != "Bearer "+tt.access {
				t.Errorf("token type or bearer header not built")
			}
		})
	}
}

func TestUnknownExpiryUsedUntilRejected(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	s, c := setup(t)
	s.setKnobs(func() { s.noExpiry = true })
	// Without expires_in the fake's JWT exp (real time + 1h) is read.
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Token().ExpiresAt.IsZero() {
		t.Errorf("ExpiresAt is zero; want the JWT's exp")
	}

	// An opaque token with no expires_in is used until the server rejects it.
	s.script(pathToken, 200, `{"access_token":"opaque-`+secretMarker+`","refresh_token":"r-`+secretMarker+`"}`, nil)
	if _, err := c.Authenticate(ctx); err != nil {
		t.Fatal(err)
	}
	clk.Advance(1000 * time.Hour)
	if tok := c.Token(); !tok.ExpiresAt.IsZero() || !tok.Valid() {
		t.Errorf("opaque token: ExpiresAt = %v, Valid() = %v; want zero, true", tok.ExpiresAt, tok.Valid())
	}
	before := s.Requests(pathToken) + s.Requests(pathRefresh)
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Requests(pathToken)+s.Requests(pathRefresh) != before {
		t.Errorf("a token of unknown expiry was refreshed without a rejection")
	}
}

// ---- the lifecycle: fresh, stale, invalid ----

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	s, c := setup(t)

	first, err := c.AccessToken(ctx)
	if err != nil {
		t.Fatalf("AccessToken() error = %v", err)
	}
	if s.Requests(pathToken) != 1 {
		t.Fatalf("token requests = %d; want 1 (lazy authentication)", s.Requests(pathToken))
	}

	// Fresh, a second before the margin: no request, none started (a
	// refresh just started may not have reached the server yet: the flight
	// is what tells). At 59m exactly the token is already stale.
	clk.Advance(59*time.Minute - time.Second)
	if tok, _ := c.AccessToken(ctx); tok != first || c.flight.Load() != nil || s.Requests(pathRefresh) != 0 {
		t.Fatalf("fresh token: a new token or a refresh started")
	}

	// Stale: the same token at once, one refresh in the background.
	release := s.hold(t, pathRefresh)
	clk.Advance(31 * time.Second) // 59m30s: inside the 60s margin, before the 10s leeway
	for i := 0; i < 10; i++ {
		if tok, err := c.AccessToken(ctx); err != nil || tok != first {
			t.Fatalf("stale token: AccessToken() did not return the held token at once (err %v)", err)
		}
	}
	release()
	waitIdle(t, c)
	if n := s.Requests(pathRefresh); n != 1 {
		t.Errorf("background refreshes = %d; want 1", n)
	}
	second, _ := c.AccessToken(ctx)
	if second == first {
		t.Fatalf("token not replaced by the background refresh")
	}
	if want := clk.Now().Add(time.Hour); !c.Token().ExpiresAt.Equal(want) {
		t.Errorf("ExpiresAt after refresh = %v; want %v", c.Token().ExpiresAt, want)
	}

	// Invalid: past expiry - leeway, callers wait for a new token.
	s.setHook(nil)
	clk.Advance(time.Hour - 5*time.Second)
	third, err := c.AccessToken(ctx)
	if err != nil || third == second {
		t.Fatalf("expired token: AccessToken() = same token or error %v", err)
	}
	if n := s.Requests(pathRefresh); n != 2 {
		t.Errorf("refreshes = %d; want 2", n)
	}
	if n := s.Requests(pathToken); n != 1 {
		t.Errorf("API-key exchanges = %d; want 1", n)
	}
}

// TestStaleWindowNobodyWaits: 1,000 goroutines calling inside the stale
// window all return the current token while the one background refresh is
// held by the server: none waited on the network. They first gather at the
// lock, which the test holds, having passed the check made without it: only
// the check under the lock keeps each from starting a refresh of its own.
func TestStaleWindowNobodyWaits(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	s, c := setup(t)
	if _, err := c.Authenticate(ctx); err != nil {
		t.Fatal(err)
	}
	old := c.Token().AccessToken
	release := s.hold(t, pathRefresh)
	clk.Advance(time.Hour - 30*time.Second) // inside the 60s margin
	c.mu.Lock()
	base := runtime.NumGoroutine()
	const n = 1000
	var wg sync.WaitGroup
	var wrong atomic.Int32
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if tok, err := c.AccessToken(ctx); err != nil || tok != old {
				wrong.Add(1)
			}
		}()
	}
	for i := 0; i < 1000 && runtime.NumGoroutine() < base+n; i++ {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // let them reach the lock; however many do, one refresh is right
	c.mu.Unlock()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	recv(t, done, "the callers (one waits for the held refresh?)")
	if wrong.Load() != 0 {
		t.Errorf("%d callers got an error or another token; want the current one", wrong.Load())
	}
	release()
	waitIdle(t, c)
	if got := s.Requests(pathRefresh); got != 1 {
		t.Errorf("refresh requests = %d; want 1", got)
	}
}

// TestTokenPathsTakeNoLock: with the client's mutex held elsewhere, a fresh
// token, and a stale one while its refresh is in flight, are still handed
// out: neither path touches the lock.
func TestTokenPathsTakeNoLock(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	s, c := setup(t)
	if _, err := c.Authenticate(ctx); err != nil {
		t.Fatal(err)
	}
	s.hold(t, pathRefresh)
	get := func(what string) {
		t.Helper()
		c.mu.Lock()
		done := make(chan error, 1)
		go func() { _, err := c.AccessToken(ctx); done <- err }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v", what, err)
			}
		case <-time.After(30 * time.Second): // a hang guard, not a timing assertion
			t.Errorf("%s: AccessToken blocked on the client's lock", what)
		}
		c.mu.Unlock()
	}
	get("fresh token")
	clk.Advance(time.Hour - 30*time.Second)
	if _, err := c.AccessToken(ctx); err != nil { // starts the refresh
		t.Fatal(err)
	}
	if c.flight.Load() == nil {
		t.Fatal("no refresh in flight")
	}
	get("stale token, refresh in flight")
}

// TestFailedBackgroundRefreshLogsWarn: a refresh that fails in the
// background, where no caller sees its error, is logged once at Warn.
func TestFailedBackgroundRefreshLogsWarn(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	var logs logBuffer
	s, c := setup(t, WithMaxRetries(0),
		WithLogger(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	s.Fail(pathRefresh, 503, "maintenance")
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

func TestRefreshRefusedFallsBackToAPIKey(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	for _, status := range []int{400, 401, 403} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			var logs logBuffer
			s, c := setup(t, WithLogger(newJSONLogger(&logs)))
			if _, err := c.AccessToken(ctx); err != nil {
				t.Fatal(err)
			}
			s.Fail(pathRefresh, status, "refresh refused")
			clk.Advance(2 * time.Hour)
			if _, err := c.AccessToken(ctx); err != nil {
				t.Fatalf("AccessToken() after refused refresh: %v", err)
			}
			if s.Requests(pathRefresh) != 1 || s.Requests(pathToken) != 2 {
				t.Errorf("refresh, token requests = %d, %d; want 1, 2", s.Requests(pathRefresh), s.Requests(pathToken))
			}
			if !strings.Contains(logs.String(), `"level":"WARN","msg":"apala: refresh refused; exchanging the API key"`) {
				t.Errorf("no Warn record for the fall-back")
			}
		})
	}
}

// ---- flights ----

// TestOneFlightShared: 1,000 goroutines needing a token at once, with none
// held or with an expired one, cause exactly one token request and all share
// its result, its error included.
func TestOneFlightShared(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		expired bool // hold an expired token first: the flight is a refresh
		fail    bool // the token request fails
	}{
		{"no token", false, false},
		{"expired token", true, false},
		{"no token, request fails", false, true},
		{"expired token, request fails", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := useFakeClock(t)
			s, c := setup(t, WithMaxRetries(0))
			path := pathToken
			if tt.expired {
				if _, err := c.Authenticate(ctx); err != nil {
					t.Fatal(err)
				}
				clk.Advance(2 * time.Hour)
				path = pathRefresh
			}
			release := s.hold(t, path)
			if tt.fail {
				s.Fail(path, 503, "down") // given once the request is released
			}
			before := s.Requests(path)
			const n = 1000
			var wg sync.WaitGroup
			toks := make([]string, n)
			errs := make([]error, n)
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					toks[i], errs[i] = c.AccessToken(ctx)
				}(i)
			}
			for s.Requests(path) == before {
				time.Sleep(time.Millisecond)
			}
			release()
			wg.Wait()
			if got := s.Requests(path) - before; got != 1 {
				t.Errorf("requests to %s = %d; want 1", path, got)
			}
			if tt.expired && s.Requests(pathToken) != 1 {
				t.Errorf("API-key exchanges = %d; want only the first", s.Requests(pathToken))
			}
			var first *APIError
			for i := range toks {
				if tt.fail {
					// The flight's own error, or the same one served from
					// the cooldown to a caller that came after it ended.
					var ae *APIError
					if !errors.As(errs[i], &ae) || (first != nil && ae != first) || !errors.Is(errs[i], ErrServer) {
						t.Fatalf("caller %d: error = %v; want the shared ErrServer", i, errs[i])
					}
					first = ae
					continue
				}
				if errs[i] != nil || toks[i] != toks[0] {
					t.Fatalf("caller %d: error %v or a different token", i, errs[i])
				}
			}
		})
	}
}

func TestFlightDetachedFromCaller(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	release := s.hold(t, pathToken)
	cctx, cancel := context.WithCancel(ctx)
	firstErr := make(chan error)
	go func() {
		_, err := c.AccessToken(cctx)
		firstErr <- err
	}()
	for s.Requests(pathToken) == 0 {
		time.Sleep(time.Millisecond)
	}
	second := make(chan error)
	go func() {
		_, err := c.AccessToken(ctx)
		second <- err
	}()
	cancel()
	if err := recv(t, firstErr, "firstErr"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller: error = %v; want context.Canceled", err)
	}
	release()
	if err := recv(t, second, "second"); err != nil {
		t.Errorf("other caller: error = %v; want the shared token", err)
	}
	if s.Requests(pathToken) != 1 {
		t.Errorf("token requests = %d; want 1", s.Requests(pathToken))
	}
}

// TestWaiterSharesExplicitFlightError: a caller that needs a token while an
// Authenticate is in flight shares that flight's failure, or meets the
// cooldown it started: one token request in all.
func TestWaiterSharesExplicitFlightError(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	s.Fail(pathToken, 401, "invalid API key")
	release := s.hold(t, pathToken)
	authErr := make(chan error, 1)
	go func() { _, err := c.Authenticate(ctx); authErr <- err }()
	for s.Requests(pathToken) == 0 {
		time.Sleep(time.Millisecond)
	}
	tokErr := make(chan error, 1)
	go func() { _, err := c.AccessToken(ctx); tokErr <- err }()
	release()
	if err := recv(t, authErr, "authErr"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Authenticate() error = %v; want ErrUnauthorized", err)
	}
	if err := recv(t, tokErr, "tokErr"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("AccessToken() error = %v; want the flight's ErrUnauthorized", err)
	}
	if got := s.Requests(pathToken); got != 1 {
		t.Errorf("token requests = %d; want 1", got)
	}
}

// ---- the failure cooldown ----

func TestFailureCooldown(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	s, c := setup(t, WithMaxRetries(0))
	s.setKnobs(func() { s.apiKey = "another key" }) // the client's key is revoked

	want := []struct {
		advance  time.Duration
		requests int // token requests so far
	}{
		{0, 1},                       // first failure: cooldown 1s
		{500 * time.Millisecond, 1},  // inside it: the last error, no request
		{500 * time.Millisecond, 2},  // after 1s: a new attempt; cooldown 2s
		{1900 * time.Millisecond, 2}, // inside 2s
		{100 * time.Millisecond, 3},  // cooldown 4s
		{4 * time.Second, 4},         // 8s
		{8 * time.Second, 5},         // 16s
		{16 * time.Second, 6},        // 30s (capped)
		{29 * time.Second, 6},        // inside 30s
		{1 * time.Second, 7},         // 30s again
		{30 * time.Second, 8},
	}
	for i, step := range want {
		clk.Advance(step.advance)
		_, err := c.AccessToken(ctx)
		if !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("step %d: error = %v; want ErrUnauthorized", i, err)
		}
		if got := s.Requests(pathToken); got != step.requests {
			t.Fatalf("step %d: token requests = %d; want %d", i, got, step.requests)
		}
	}

	// An explicit Authenticate ignores the cooldown, and success resets it.
	s.setKnobs(func() { s.apiKey = FakeAPIKey })
	if _, err := c.Authenticate(ctx); err != nil {
		t.Fatalf("Authenticate() during cooldown: %v", err)
	}
	if c.cooldown != 0 || c.cooldownUntil.Load() != 0 {
		t.Errorf("cooldown not reset by a success")
	}
}

// TestExplicitFailureStartsCooldown: a failed Authenticate starts the
// failure cooldown like an automatic flight, and the error served from it
// says that nothing was sent.
func TestExplicitFailureStartsCooldown(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	s, c := setup(t)
	s.Fail(pathToken, 401, "invalid API key")
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
	if got := s.Requests(pathToken); got != 1 {
		t.Fatalf("token requests during the cooldown = %d; want 1", got)
	}
	clk.Advance(time.Second)
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatalf("AccessToken() after the cooldown: %v", err)
	}
	if got := s.Requests(pathToken); got != 2 {
		t.Errorf("token requests = %d; want 2", got)
	}
}

// TestRevokedKeyUnderLoad: with the API key revoked, 16 goroutines calling
// without pause for two simulated minutes cause no more token requests than
// the cooldown schedule allows.
func TestRevokedKeyUnderLoad(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	s, c := setup(t, WithMaxRetries(0))
	s.setKnobs(func() { s.apiKey = "another key" })
	const step = 250 * time.Millisecond
	var (
		elapsed  time.Duration
		next     time.Duration // when the schedule allows the next request
		cooldown = time.Second
		want     int
	)
	for elapsed = step; elapsed <= 2*time.Minute; elapsed += step {
		clk.Advance(step)
		if elapsed >= next {
			want++
			next = elapsed + cooldown
			cooldown = min(2*cooldown, 30*time.Second)
		}
		var wg sync.WaitGroup
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 4; i++ {
					if _, err := c.AccessToken(ctx); !errors.Is(err, ErrUnauthorized) {
						t.Errorf("AccessToken() error = %v; want ErrUnauthorized", err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if got := s.Requests(pathToken); got != want {
			t.Fatalf("after %v: token requests = %d; want %d", elapsed, got, want)
		}
	}
	if want > 10 {
		t.Errorf("schedule allowed %d requests in 2 minutes; want at most 10", want)
	}
}

// ---- a 401: the token side ----

// TestMany401OneNewToken: 100 goroutines all answered 401 on the same token
// cause one new token and one replay each.
func TestMany401OneNewToken(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	if _, err := c.Authenticate(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 100
	var arrived sync.WaitGroup
	arrived.Add(n)
	var first sync.Once
	old := c.Token().AccessToken
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/api/feedback" && r.Header.Get("Authorization") == "Bearer "+old {
			// Hold every call made with the old token until all n have
			// arrived, then revoke it: each is answered 401.
			arrived.Done()
			arrived.Wait()
			first.Do(s.RevokeTokens)
		}
		return false
	})
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, errs[i] = c.SubmitFeedback(ctx, Feedback{MessageID: fmt.Sprint("m", i), Score: ScoreGood})
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
	}
	// One new token, in one flight: RevokeTokens revoked the refresh token
	// too, so its refresh is refused and it falls back to the API key.
	if r, x := s.Requests(pathRefresh), s.Requests(pathToken); r != 1 || x != 2 {
		t.Errorf("refresh, token requests = %d, %d; want 1, 2 (one flight: the refused refresh, then the API key)", r, x)
	}
	if got := s.Requests("/api/feedback"); got != 2*n {
		t.Errorf("feedback requests = %d; want %d (each call: a 401, then one replay)", got, 2*n)
	}
}

func TestRejectKeepsNewerToken(t *testing.T) {
	_, c := setup(t)
	old := holdToken(c, "old", "r", 3600, 0)
	newer := holdToken(c, "newer", "r", 3600, 0)
	c.reject(old)
	if c.pair.Load() != newer {
		t.Errorf("reject of a replaced token dropped the newer one")
	}
	c.reject(newer)
	if p := c.pair.Load(); p == newer || p.access != "" || p.refresh != "r" {
		t.Errorf("reject of the current token: not invalidated, or refresh token lost")
	}
}

// ---- Close: the flight's half ----

// TestCloseCancelsFlight: Close ends a token request in progress by
// cancelling it, not by waiting for it to end. With no per-attempt timeout
// and no deadline on the caller's context, the server holds the request
// until the test releases it or the request's context ends, and the test
// releases it only after Close has returned: the handler must have seen its
// request cancelled first. A caller waiting for the token gets ErrClosed, and
// no goroutine is left. The 30s bounds only stop a hung test.
func TestCloseCancelsFlight(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		stale bool // hold a stale token: the flight is a background refresh
	}{{"exchange with a caller waiting", false}, {"background refresh", true}} {
		t.Run(tc.name, func(t *testing.T) {
			clk := useFakeClock(t)
			before := runtime.NumGoroutine()
			s := startServer(t)
			c := newTestClient(t, WithBaseURL(s.URL), WithTimeout(0))
			path := pathToken
			if tc.stale {
				if _, err := c.AccessToken(ctx); err != nil {
					t.Fatal(err)
				}
				clk.Advance(59*time.Minute + 30*time.Second)
				path = pathRefresh
			}
			release := make(chan struct{})
			arrived := make(chan struct{}, 1)
			ended := make(chan string, 1) // why the handler stopped holding
			s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path != path {
					return false
				}
				arrived <- struct{}{}
				select {
				case <-release:
					ended <- "released by the test"
				case <-r.Context().Done():
					ended <- "cancelled"
				}
				return true
			})
			callerErr := make(chan error, 1)
			if tc.stale {
				if _, err := c.AccessToken(ctx); err != nil { // returns at once, starts the refresh
					t.Fatal(err)
				}
			} else {
				go func() { _, err := c.AccessToken(ctx); callerErr <- err }()
			}
			select {
			case <-arrived:
			case <-time.After(30 * time.Second):
				t.Fatal("the token request never reached the server")
			}

			closed := make(chan struct{})
			go func() { c.Close(); close(closed) }()
			select {
			case <-closed:
			case <-time.After(30 * time.Second):
				t.Errorf("Close() still waiting after 30s while the server holds the token request: it did not cancel it")
				close(release)
				<-closed
			}
			var why string
			select {
			case why = <-ended:
			case <-time.After(30 * time.Second):
				why = "still held after 30s"
			}
			if why != "cancelled" {
				t.Errorf("the held token request ended %s; want cancelled by Close before the test released it", why)
			}
			select {
			case <-release:
			default:
				close(release)
			}
			if !tc.stale {
				if err := recv(t, callerErr, "callerErr"); !errors.Is(err, ErrClosed) {
					t.Errorf("waiting caller: AccessToken() error = %v; want ErrClosed", err)
				}
			}
			if c.flight.Load() != nil {
				t.Errorf("a flight is still recorded after Close")
			}
			s.Close()
			settle(t, before)
		})
	}
}

func TestNoGoroutineLeft(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	before := runtime.NumGoroutine()
	s := startServer(t)
	for i := 0; i < 20; i++ {
		c := newTestClient(t, WithBaseURL(s.URL))
		if _, err := c.AccessToken(ctx); err != nil {
			t.Fatal(err)
		}
		clk.Advance(59*time.Minute + 30*time.Second)
		_, _ = c.AccessToken(ctx) // starts a background refresh
		c.Close()
		clk.Advance(time.Hour)
	}
	s.Close()
	settle(t, before)
}

// ---- token stores ----

// TestTokenStoreShared: a second client adopts the token the first saved,
// with no token request of its own; a token of another key, another base
// URL, one that expired, or one the server refused is not adopted.
func TestTokenStoreShared(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	s := startServer(t)
	store := &memStore{}
	first := newTestClient(t, WithBaseURL(s.URL), WithTokenStore(store))
	if _, err := first.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	if store.saves != 1 || store.tok.KeyID == "" || store.tok.ExpiresAt != clk.Now().Add(time.Hour) {
		t.Fatalf("after the first token: %d saves, stored %v; want 1 save of a token expiring in an hour with a KeyID", store.saves, store.tok)
	}
	if strings.Contains(store.tok.KeyID, FakeAPIKey) || strings.Contains(fmt.Sprint(store.tok), secretMarker) {
		t.Fatalf("the stored token shows a secret, or its KeyID the key")
	}
	second := newTestClient(t, WithBaseURL(s.URL), WithTokenStore(store))
	tok, err := second.AccessToken(ctx)
	if err != nil || tok != first.Token().AccessToken || s.Requests(pathToken) != 1 {
		t.Fatalf("second client: error %v, same token %v, exchanges %d; want the stored token and 1 exchange", err, tok == first.Token().AccessToken, s.Requests(pathToken))
	}
	if second.Token().CompanyName != fakeCompanyName {
		t.Errorf("adopted company = %q; want %q", second.Token().CompanyName, fakeCompanyName)
	}
	// Not adopted: another key, another base URL.
	other, _ := NewClient("other-key", WithBaseURL(s.URL), WithTokenStore(store))
	defer other.Close()
	if _, err := other.AccessToken(ctx); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("a client of another key: error = %v; want the server's 401, not the stored token", err)
	}
	elsewhere := newTestClient(t, WithBaseURL(strings.Replace(s.URL, "127.0.0.1", "localhost", 1)), WithTokenStore(store))
	if _, err := elsewhere.AccessToken(ctx); err != nil || s.Requests(pathToken) != 3 {
		t.Errorf("a client of another base URL: %v after %d exchanges; want its own exchange (3)", err, s.Requests(pathToken))
	}
	// Not adopted: expired.
	clk.Advance(2 * time.Hour)
	late := newTestClient(t, WithBaseURL(s.URL), WithTokenStore(store))
	store.mu.Lock()
	store.tok.ExpiresAt = clk.Now().Add(-time.Second)
	store.mu.Unlock()
	before := s.Requests(pathToken)
	if _, err := late.AccessToken(ctx); err != nil || s.Requests(pathToken) != before+1 {
		t.Errorf("with an expired stored token: %v; want an exchange of its own", err)
	}
}

// TestTokenStoreRefusedNotAdopted: after the server refused a token, the
// same token in the store is not adopted again.
func TestTokenStoreRefusedNotAdopted(t *testing.T) {
	ctx := context.Background()
	s := startServer(t)
	store := &memStore{}
	c := newTestClient(t, WithBaseURL(s.URL), WithTokenStore(store))
	if _, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}); err != nil {
		t.Fatal(err)
	}
	s.RevokeTokens()
	if _, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}); err != nil {
		t.Fatalf("after a revocation: %v", err)
	}
	if got := s.Requests(pathRefresh); got != 1 {
		t.Errorf("refreshes = %d; want 1 (the stored, refused token not adopted)", got)
	}
}

// TestTokenStoreFailures: a store that fails costs nothing but a log line.
func TestTokenStoreFailures(t *testing.T) {
	ctx := context.Background()
	var logs logBuffer
	store := &memStore{err: errors.New("disk on fire")}
	s, c := setup(t, WithTokenStore(store), WithLogger(newJSONLogger(&logs)))
	if _, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}); err != nil {
		t.Fatalf("with a failing store: %v", err)
	}
	if s.Requests(pathToken) != 1 || store.loads != 1 || store.saves != 1 {
		t.Errorf("exchanges %d, loads %d, saves %d; want 1 each", s.Requests(pathToken), store.loads, store.saves)
	}
	var warns int
	for _, r := range logs.records(t) {
		if r["level"] == "WARN" && r["msg"] == "apala: token store failed; going on without it" {
			warns++
		}
	}
	if warns != 2 {
		t.Errorf("store warnings = %d; want 2 (load and save)", warns)
	}
}

// TestStoredTokenPrinting: a StoredToken prints and logs redacted, and
// encodes with its real fields, to be persisted.
func TestStoredTokenPrinting(t *testing.T) {
	st := StoredToken{AccessToken: "acc-SECRET-1", RefreshToken: "ref-SECRET-2", ExpiresAt: time.Date(2025, 1, 15, 11, 0, 0, 0, time.UTC), KeyID: "k1"}
	var b bytes.Buffer
	slog.New(slog.NewJSONHandler(&b, nil)).Info("t", slog.Any("t", st), slog.Any("p", &st))
	noSecret(t, "log", b.String())
	noSecret(t, "fmt", fmt.Sprintf("%v %+v %#v %s", st, &st, st, st))
	js, err := json.Marshal(st)
	if err != nil || !strings.Contains(string(js), `"access_token":"acc-SECRET-1"`) || !strings.Contains(string(js), `"refresh_token":"ref-SECRET-2"`) {
		t.Errorf("json.Marshal(StoredToken) does not give the real fields (withheld)")
	}
}

// TestFileTokenStore: the file store round-trips a token in a 0600 file,
// ignores a foreign file (and overwrites it), and its lock excludes.
func TestFileTokenStore(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "token.json")
	fs := NewFileTokenStore(path)
	if tok, err := fs.Load(ctx); tok != nil || err != nil {
		t.Fatalf("Load() of no file = %v, %v; want nil, nil", tok, err)
	}
	want := StoredToken{AccessToken: "a", RefreshToken: "r", TokenType: "Bearer", ExpiresAt: time.Date(2025, 1, 15, 11, 0, 0, 0, time.UTC), CompanyID: "c", CompanyName: "n", KeyID: "k"}
	if err := fs.Save(ctx, &want); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || (runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600) {
		t.Fatalf("file mode = %v, %v; want 0600", fi.Mode(), err)
	}
	got, err := fs.Load(ctx)
	if err != nil || *got != want {
		t.Fatalf("Load() = %+v, %v; want what was saved", got, err)
	}
	if err := os.WriteFile(path, []byte(`{"some":"other file"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := fs.Load(ctx); got != nil || err == nil {
		t.Fatalf("Load() of a foreign file = %v, %v; want an error", got, err)
	}
	if err := fs.Save(ctx, &want); err != nil {
		t.Fatal(err)
	}
	if got, err := fs.Load(ctx); err != nil || *got != want {
		t.Fatalf("Load() after overwriting the foreign file = %v, %v", got, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("files beside the store = %d; want only the store (no temporary left)", len(entries))
	}

	// The lock excludes: the second Lock waits for the first unlock.
	l := fs.(TokenLocker)
	unlock, err := l.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	var mu sync.Mutex
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	done := make(chan struct{})
	go func() {
		u2, err := l.Lock(ctx)
		if err == nil {
			note("second locked")
			u2()
		}
		close(done)
	}()
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	if _, err := l.Lock(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a third Lock with a short deadline: %v; want DeadlineExceeded", err)
	}
	cancel()
	note("first unlocks")
	unlock()
	recv(t, done, "done")
	if fmt.Sprint(order) != "[first unlocks second locked]" {
		t.Errorf("order = %v; want the second to lock after the first unlocked", order)
	}
	if _, err := os.Stat(path + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file left behind: %v", err)
	}

	// A stale lock file is taken over.
	if err := os.WriteFile(path+".lock", []byte("12345 crashed"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path+".lock", old, old); err != nil {
		t.Fatal(err)
	}
	u3, err := l.Lock(ctx)
	if err != nil {
		t.Fatalf("Lock() over a stale lock file: %v", err)
	}
	u3()
}

// TestStoreChild is not a test of its own: it is the body of the child
// processes that TestFileTokenStoreAcrossProcesses and
// TestFileTokenStoreCrashedHolder start.
func TestStoreChild(t *testing.T) {
	mode := os.Getenv(storeChild)
	if mode == "" {
		t.Skip("runs only as a child process")
	}
	path, url := os.Getenv("APALA_STORE_PATH"), os.Getenv("APALA_STORE_URL")
	store := NewFileTokenStore(path)
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "child: "+format+"\n", args...)
		os.Exit(3)
	}
	if mode == "hold" {
		if _, err := store.(TokenLocker).Lock(context.Background()); err != nil {
			fail("lock: %v", err)
		}
		fmt.Println("child: locked")
		time.Sleep(time.Hour) // until killed
	}
	opts := []ClientOption{WithBaseURL(url), WithRetryBackoff(time.Millisecond, 10*time.Millisecond), WithRefreshMargin(500 * time.Millisecond)}
	if mode == "store" {
		opts = append(opts, WithTokenStore(store))
	}
	c := newTestClient(t, opts...)
	call := func() {
		if _, err := c.SubmitFeedback(context.Background(), Feedback{MessageID: "m", Score: ScoreGood}); err != nil {
			fail("call: %v", err)
		}
	}
	call()
	fmt.Println("child: ready")
	var line string
	if _, err := fmt.Scanln(&line); err != nil || line != "go" {
		return
	}
	d, _ := time.ParseDuration(os.Getenv("APALA_STORE_RUN"))
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		call()
	}
	fmt.Println("child: done")
}

// TestFileTokenStoreAcrossProcesses: 8 processes sharing one file store
// make one token request at start (8 without it), and one per refresh
// cycle of short-lived tokens after a revocation, instead of one each.
func TestFileTokenStoreAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 16 processes and runs for about 8s")
	}
	const n = 8
	s := startServer(t)

	// Without a store, for comparison: one exchange each.
	_, ins, lines := startChildren(t, n, "nostore", s.URL, filepath.Join(t.TempDir(), "unused.json"), "0s")
	expect(t, lines, n, "ready")
	for _, in := range ins {
		in.Close()
	}
	without := s.Requests(pathToken)

	s2 := startServer(t)
	path := filepath.Join(t.TempDir(), "token.json")
	_, ins, lines = startChildren(t, n, "store", s2.URL, path, "7500ms")
	expect(t, lines, n, "ready")
	atStart := s2.Requests(pathToken) + s2.Requests(pathRefresh)
	// Short-lived tokens from now on, and the hour-long ones revoked: the
	// children move to 3s tokens refreshed 0.5s before they expire, a
	// refresh cycle of 2.5s, three cycles in the 7.5s run. The 3s are the
	// children's (expires_in): the server accepts the tokens for its hour,
	// so that a request held up on a busy machine is not refused for
	// expiry; and it keeps the refresh tokens, so that the revocation costs
	// one refresh, not a refused refresh and an exchange.
	s2.setKnobs(func() { s2.expiresIn = 3 })
	s2.revokeAccess()
	for _, in := range ins {
		fmt.Fprintln(in, "go")
	}
	expect(t, lines, n, "done")
	later := s2.Requests(pathToken) + s2.Requests(pathRefresh) - atStart
	t.Logf("token requests of %d processes: without a store %d at start; with the file store %d at start, %d over the 7.5s run (exchanges %d, refreshes %d)",
		n, without, atStart, later, s2.Requests(pathToken), s2.Requests(pathRefresh))
	if without != n {
		t.Errorf("exchanges without a store = %d; want %d", without, n)
	}
	if atStart != 1 {
		t.Errorf("token requests at start with the store = %d; want 1", atStart)
	}
	if later > 4 {
		t.Errorf("token requests over three refresh cycles = %d; want at most 4 (one after the revocation, one per cycle)", later)
	}
}

// TestFileTokenStoreCrashedHolder: a process killed while holding the lock
// blocks the others only until its lock file is old enough to take over.
func TestFileTokenStoreCrashedHolder(t *testing.T) {
	ctx := context.Background()
	if testing.Short() {
		t.Skip("starts a process")
	}
	s := startServer(t)
	path := filepath.Join(t.TempDir(), "token.json")
	cmds, _, lines := startChildren(t, 1, "hold", s.URL, path, "0s")
	expect(t, lines, 1, "locked")
	if err := cmds[0].Process.Kill(); err != nil {
		t.Fatal(err)
	}
	saved := fileLockStale
	fileLockStale = 500 * time.Millisecond
	defer func() { fileLockStale = saved }()
	c := newTestClient(t, WithBaseURL(s.URL), WithTokenStore(NewFileTokenStore(path)))
	start := time.Now()
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatalf("AccessToken() after the holder crashed: %v", err)
	}
	t.Logf("waited %v for a lock whose holder was killed (takeover bound %v)", time.Since(start).Round(time.Millisecond), fileLockStale)
	if s.Requests(pathToken) != 1 {
		t.Errorf("exchanges = %d; want 1", s.Requests(pathToken))
	}
	if _, err := os.Stat(path + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the lock file was not released: %v", err)
	}
}

// echoStore is a TokenStore whose Save fails with an error quoting what it
// was given, as a store's client library may.
type echoStore struct{}

func (echoStore) Load(context.Context) (*StoredToken, error) { return nil, nil }
func (echoStore) Save(_ context.Context, t *StoredToken) error {
	return fmt.Errorf("SET apala %s %s: READONLY", t.AccessToken, t.RefreshToken)
}

// TestStoreErrorScrubbed: a store's error is logged without the tokens the
// client was saving, which it does not hold yet.
func TestStoreErrorScrubbed(t *testing.T) {
	var logs logBuffer
	_, c := setup(t, WithTokenStore(echoStore{}), WithLogger(newJSONLogger(&logs)))
	if _, err := c.AccessToken(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "token store failed") {
		t.Fatal("no store failure logged")
	}
	noSecret(t, "log output", logs.String())
}

// TestFileLockOddFiles: a lock file dated in the future by more than the
// bound is taken over; a stale one that cannot be removed is an error, not
// a spin, and the token request goes on without the lock; a store path that
// is not a regular file is an error, not a hang; Lock(nil) is an error.
func TestFileLockOddFiles(t *testing.T) {
	ctx := context.Background()
	saved := fileLockStale
	fileLockStale = 50 * time.Millisecond
	defer func() { fileLockStale = saved }()

	future := filepath.Join(t.TempDir(), "future.json")
	if err := os.WriteFile(future+".lock", []byte("1 x"), 0o600); err != nil {
		t.Fatal(err)
	}
	ahead := time.Now().Add(24 * time.Hour)
	if err := os.Chtimes(future+".lock", ahead, ahead); err != nil {
		t.Fatal(err)
	}
	guard, cancel := context.WithTimeout(ctx, 30*time.Second) // a safety net, not a measure
	defer cancel()
	unlock, err := NewFileTokenStore(future).(TokenLocker).Lock(guard)
	if err != nil {
		t.Fatalf("Lock() over a lock dated a day ahead: %v", err)
	}
	unlock()

	stuck := filepath.Join(t.TempDir(), "stuck.json")
	if err := os.MkdirAll(filepath.Join(stuck+".lock", "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Hour)
	if err := os.Chtimes(stuck+".lock", past, past); err != nil {
		t.Fatal(err)
	}
	if _, err := NewFileTokenStore(stuck).(TokenLocker).Lock(guard); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock() over a stale lock that cannot be removed: nil error; want one")
	}
	s, c := setup(t, WithTokenStore(NewFileTokenStore(stuck)))
	if _, err := c.AccessToken(ctx); err != nil || s.Requests(pathToken) != 1 {
		t.Errorf("AccessToken() with a lock that cannot be taken: %v after %d exchanges; want success after 1", err, s.Requests(pathToken))
	}

	dir := filepath.Join(t.TempDir(), "dir.json")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if tok, err := NewFileTokenStore(dir).Load(ctx); tok != nil || err == nil {
		t.Errorf("Load() of a directory = %v, %v; want an error", tok, err)
	}
	if _, err := NewFileTokenStore(future).(TokenLocker).Lock(nilCtx); !errors.Is(err, errNilContext) {
		t.Errorf("Lock(nil) error = %v; want %v", err, errNilContext)
	}
}

// TestRefusedRefreshDroppedFromEveryGeneration: the refresh token the server
// refused is dropped from the pair held even when a 401 replaced that pair
// by its rejected copy meanwhile, so that it is never sent again.
func TestRefusedRefreshDroppedFromEveryGeneration(t *testing.T) {
	_, c := setup(t)
	p := holdToken(c, "a.b.c", "refused-refresh", 3600, 0)
	c.reject(p)
	c.dropRefresh("refused-refresh")
	if got := c.pair.Load(); got.refresh != "" || got.access != "" || !c.wasRefused("a.b.c") {
		t.Errorf("after dropRefresh: refresh %q, refused %v; want no refresh token, the refusal kept", got.refresh, c.wasRefused("a.b.c"))
	}
	holdToken(c, "d.e.f", "other-refresh", 3600, 0)
	c.dropRefresh("refused-refresh")
	if got := c.pair.Load(); got.refresh != "other-refresh" {
		t.Errorf("dropRefresh removed another refresh token")
	}
}

// TestTokenAnswerTextScrubbed: the token type and the company of a token
// answer are the server's text; echoing a secret there does not print it
// with the Token, the answers or a Token hook's report.
func TestTokenAnswerTextScrubbed(t *testing.T) {
	ctx := context.Background()
	var infos []TokenInfo
	var mu sync.Mutex
	s, c := setup(t, WithHooks(Hooks{Token: func(_ context.Context, ti TokenInfo) { mu.Lock(); infos = append(infos, ti); mu.Unlock() }}))
	refresh := "ref-SECRET-0123456789"
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		case pathToken:
			writeJSON(w, 200, map[string]any{"access_token": "acc-SECRET-0123456789", "refresh_token": refresh, "expires_in": 3600,
				"token_type": FakeAPIKey, "company_id": FakeAPIKey, "company_name": "ACME " + FakeAPIKey})
		case pathRefresh:
			writeJSON(w, 200, map[string]any{"access_token": "acc-SECRET-9876543210", "expires_in": 3600, "token_type": "Bearer " + refresh})
		default:
			return false
		}
		return true
	})
	ar, err := c.Authenticate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rr, err := c.RefreshAccessToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitIdle(t, c) // the Token hook has reported both
	mu.Lock()
	defer mu.Unlock()
	if len(infos) != 2 {
		t.Fatalf("Token reports = %d; want 2", len(infos))
	}
	for _, v := range []any{ar, rr, c.Token(), infos} {
		js, _ := json.Marshal(v)
		var b bytes.Buffer
		slog.New(slog.NewTextHandler(&b, nil)).Info("v", slog.Any("v", v))
		out := fmt.Sprintf("%v %+v %s %s", v, v, js, b.String())
		noSecret(t, fmt.Sprintf("output of %T", v), out)
		// Runs the tokens do not share with the API key, which is
		// scrubbed anyway.
		if secretRun(out, "acc-SECRET-0123456789", refresh, "acc-SECRET-9876543210") != "" {
			t.Errorf("output of %T holds a run of a token (withheld)", v)
		}
	}
}

// TestStoredTokenTextScrubbed: an adopted stored token whose company echoes
// its own tokens prints none of them.
func TestStoredTokenTextScrubbed(t *testing.T) {
	const access, refresh = "stored.access.0123456789", "stored-refresh-9876543210"
	store := &memStore{}
	_, c := setup(t, WithTokenStore(store))
	now := c.now()
	store.tok = &StoredToken{AccessToken: access, RefreshToken: refresh, TokenType: "Bearer " + refresh, IssuedAt: now,
		ExpiresAt: now.Add(time.Hour), CompanyID: access, CompanyName: "Acme " + refresh, KeyID: c.keyID(FakeAPIKey)}
	if tok, err := c.AccessToken(context.Background()); err != nil || tok != access {
		t.Fatalf("the stored token was not adopted (err %v)", err)
	}
	tok := c.Token()
	if secretRun(tok.TokenType+" "+tok.CompanyID+" "+tok.CompanyName, access, refresh) != "" {
		t.Errorf("the adopted token's text holds a run of its tokens (withheld)")
	}
}

// TestKeyFuncErrorScrubbed: an error of WithAPIKeyFunc's function that
// quotes a key it returned before is scrubbed of it.
func TestKeyFuncErrorScrubbed(t *testing.T) {
	calls := 0
	fn := func(context.Context) (string, error) {
		calls++
		if calls == 1 {
			return FakeAPIKey, nil
		}
		return "", errors.New("vault: key " + FakeAPIKey + " was revoked")
	}
	_, c := setup(t, WithAPIKeyFunc(fn))
	if _, err := c.Authenticate(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := c.Authenticate(context.Background())
	if err == nil || !strings.HasPrefix(err.Error(), "apala: API key: vault: key [REDACTED] was revoked") {
		t.Fatalf("error does not say the function failed, scrubbed (withheld)")
	}
	noSecret(t, "error", err.Error())
}

// blockingStore is a TokenStore whose Load waits until its context ends.
type blockingStore struct{}

func (blockingStore) Load(ctx context.Context) (*StoredToken, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (blockingStore) Save(context.Context, *StoredToken) error { return nil }

// TestStoreHangsBounded: a store that hangs costs a token request, not the
// call: each use of it is bounded.
func TestStoreHangsBounded(t *testing.T) {
	saved := storeTimeout
	storeTimeout = 20 * time.Millisecond
	defer func() { storeTimeout = saved }()
	s, c := setup(t, WithTokenStore(blockingStore{}))
	guard, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a safety net, not a measure
	defer cancel()
	if _, err := c.AccessToken(guard); err != nil || s.Requests(pathToken) != 1 {
		t.Errorf("AccessToken() with a hanging store: %v after %d exchanges; want success after 1", err, s.Requests(pathToken))
	}
}

// ---- the edges of the second round ----

// deafStore ignores its context: Load and Lock block until release is
// closed, as a store on a hung network mount would.
type deafStore struct{ release chan struct{} }

func (d deafStore) Load(context.Context) (*StoredToken, error) { <-d.release; return nil, nil }
func (d deafStore) Save(context.Context, *StoredToken) error   { return nil }
func (d deafStore) Lock(context.Context) (func(), error) {
	<-d.release
	return func() {}, nil
}

// TestStoreIgnoringContextBounded: a store that ignores its context costs
// a call at most the bound: the flight goes on without it, and Close does
// not wait for it.
func TestStoreIgnoringContextBounded(t *testing.T) {
	saved := storeTimeout
	storeTimeout = 20 * time.Millisecond
	defer func() { storeTimeout = saved }()
	store := deafStore{release: make(chan struct{})}
	defer close(store.release)
	var logs logBuffer
	s, c := setup(t, WithTokenStore(store), WithLogger(newJSONLogger(&logs)))
	guard, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a safety net, not a measure
	defer cancel()
	if _, err := c.AccessToken(guard); err != nil || s.Requests(pathToken) != 1 {
		t.Fatalf("AccessToken() with a deaf store: %v after %d exchanges; want success after 1", err, s.Requests(pathToken))
	}
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-guard.Done():
		t.Fatal("Close waits for a store that ignores its context")
	}
	if !strings.Contains(logs.String(), "token store failed") {
		t.Errorf("no Warn record about the store")
	}
}

// TestStoredTokenFreshness: a stored token is adopted only when its time
// left exceeds the margin the client would apply to it (capped at half its
// lifetime, from IssuedAt; uncapped without); an expired one, one inside
// the margin, one without ExpiresAt or one not newer than the client's own
// is not, and the client asks the server instead.
func TestStoredTokenFreshness(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	now := clk.Now()
	tests := []struct {
		name           string
		issued, expiry time.Time
		adopt          bool
	}{
		{"expired an hour ago", now.Add(-2 * time.Hour), now.Add(-time.Hour), false},
		{"20ms left, no IssuedAt", time.Time{}, now.Add(20 * time.Millisecond), false},
		{"30s left of 1h: inside the margin", now.Add(-time.Hour + 30*time.Second), now.Add(30 * time.Second), false},
		{"59s left of 1h", now.Add(-time.Hour + 59*time.Second), now.Add(59 * time.Second), false},
		{"61s left of 1h", now.Add(-time.Hour + 61*time.Second), now.Add(61 * time.Second), true},
		{"40s left of 60s: margin capped at 30s", now.Add(-20 * time.Second), now.Add(40 * time.Second), true},
		{"no ExpiresAt", now, time.Time{}, false},
		{"fresh", now, now.Add(time.Hour), true},
		{"expired, issued after its expiry", now.Add(time.Hour), now.Add(-time.Second), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := &memStore{}
			s, c := setup(t, WithTokenStore(store))
			store.tok = &StoredToken{AccessToken: "stored.access.token", RefreshToken: "stored-refresh", TokenType: "Bearer",
				IssuedAt: tt.issued, ExpiresAt: tt.expiry, KeyID: c.keyID(FakeAPIKey)}
			tok, err := c.AccessToken(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if adopted := tok == "stored.access.token"; adopted != tt.adopt || (s.Requests(pathToken) == 0) != tt.adopt {
				t.Errorf("adopted = %v after %d exchanges; want %v", adopted, s.Requests(pathToken), tt.adopt)
			}
			if !c.Token().Valid() {
				t.Errorf("Token().Valid() = false after AccessToken")
			}
		})
	}
	// Not newer than the client's own: not adopted.
	store := &memStore{}
	s, c := setup(t, WithTokenStore(store))
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	own := c.Token()
	store.tok = &StoredToken{AccessToken: "older.access.token", IssuedAt: now.Add(-time.Minute), ExpiresAt: own.ExpiresAt.Add(-time.Minute), KeyID: c.keyID(FakeAPIKey)}
	clk.Advance(time.Hour - 30*time.Second) // stale: a refresh runs
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, c)
	if c.Token().AccessToken == "older.access.token" || s.Requests(pathRefresh) != 1 {
		t.Errorf("an older stored token was adopted, or no refresh (%d)", s.Requests(pathRefresh))
	}
}

// TestRefusedStoredTokenNotAdoptedAgain: a stored token the server refused
// is never adopted again by that client, even when the store cannot be
// overwritten: four token lifetimes, one call sent with the refused token.
func TestRefusedStoredTokenNotAdoptedAgain(t *testing.T) {
	ctx := context.Background()
	s := startServer(t)
	donor := newTestClient(t, WithBaseURL(s.URL))
	if _, err := donor.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	stored := donor.pair.Load()
	store := &memStore{tok: &StoredToken{AccessToken: stored.access, RefreshToken: stored.refresh, TokenType: "Bearer",
		IssuedAt: stored.issuedAt.Round(0), ExpiresAt: stored.expiresAt.Round(0), KeyID: stored.keyID}}
	var sentWithStored atomic.Int32
	hc := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Header.Get("Authorization") == "Bearer "+stored.access {
			sentWithStored.Add(1)
		}
		return http.DefaultTransport.RoundTrip(r)
	})}
	c := newTestClient(t, WithBaseURL(s.URL), WithHTTPClient(hc), WithTokenStore(readOnly{store}))
	for i := 0; i < 4; i++ {
		s.RevokeTokens() // a lifetime ends: every token refused
		if _, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if n := sentWithStored.Load(); n != 1 {
		t.Errorf("calls sent with the refused stored token = %d; want 1", n)
	}
}

// readOnly is a store that loads but cannot save, as on a full or
// read-only disk.
type readOnly struct{ TokenStore }

func (readOnly) Save(context.Context, *StoredToken) error { return errors.New("read-only file system") }

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestFileLockStaleKinds: a lock file that is a dangling symlink, or not a
// regular file, is stale and taken over at once; one that cannot be removed
// is an error at once, never a wait for the bound.
func TestFileLockStaleKinds(t *testing.T) {
	guard, cancel := context.WithTimeout(context.Background(), 10*time.Second) // the bound is 10s: a wait fails
	defer cancel()
	dir := t.TempDir()
	path := filepath.Join(dir, "token.json")
	if err := os.Symlink(filepath.Join(dir, "nowhere"), path+".lock"); err != nil {
		t.Skip("no symlinks here:", err)
	}
	unlock, err := NewFileTokenStore(path).(TokenLocker).Lock(guard)
	if err != nil {
		t.Fatalf("Lock() over a dangling symlink: %v; want the lock taken over", err)
	}
	unlock()
	if err := os.MkdirAll(filepath.Join(path+".lock", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := NewFileTokenStore(path).(TokenLocker).Lock(guard); err == nil || guard.Err() != nil {
		t.Errorf("Lock() over a lock that cannot be removed: error %v, guard %v; want an error at once", err, guard.Err())
	}
}

// TestTokenHooksHoldNobody: the reports about a token request come after
// its result reached its callers and after the store's lock was released,
// in order; a Token hook may call AccessToken and Authenticate without a
// deadlock, and a hook that blocks holds up no caller.
func TestTokenHooksHoldNobody(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "token.json")
	var mu sync.Mutex
	var order []string
	release := make(chan struct{})
	entered := make(chan struct{}, 4)
	var c *Client
	hooks := Hooks{
		Attempt: func(_ context.Context, a AttemptInfo) {
			mu.Lock()
			order = append(order, "attempt "+a.Path)
			mu.Unlock()
		},
		Token: func(ctx context.Context, ti TokenInfo) {
			mu.Lock()
			order = append(order, "token")
			mu.Unlock()
			if _, err := os.Lstat(path + ".lock"); err == nil {
				t.Errorf("the Token hook runs with the store's lock held")
			}
			bound, cancel := context.WithTimeout(ctx, 10*time.Second) // a deadlock fails, not hangs
			defer cancel()
			if _, err := c.AccessToken(bound); err != nil {
				t.Errorf("AccessToken() in the Token hook: %v", err)
			}
			entered <- struct{}{}
			<-release
		},
	}
	_, c = setup(t, WithHooks(hooks), WithTokenStore(NewFileTokenStore(path)))
	defer close(release)
	guard, cancel := context.WithTimeout(ctx, 30*time.Second) // a hook that holds the caller fails, not hangs
	defer cancel()
	if _, err := c.AccessToken(guard); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the Token hook never ran")
	}
	// The hook blocks; callers do not wait for it.
	if _, err := c.SubmitFeedback(guard, Feedback{MessageID: "m", Score: ScoreGood}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := strings.Join(order, ", ")
	mu.Unlock()
	if want := "attempt /api/auth/token, token, attempt /api/feedback"; got != want {
		t.Errorf("reports = %s; want %s", got, want)
	}
}

// TestDoneContextSendsNothing: a call whose context is already done
// returns its error with no request, token requests included; AccessToken
// with a usable token held still returns it.
func TestDoneContextSendsNothing(t *testing.T) {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	var trips atomic.Int32 // what the transport was asked to send, whatever the context
	hc := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		trips.Add(1)
		return http.DefaultTransport.RoundTrip(r)
	})}
	s, c := setup(t, WithHTTPClient(hc))
	calls := map[string]func() error{
		"AccessToken":        func() error { _, err := c.AccessToken(done); return err },
		"Authenticate":       func() error { _, err := c.Authenticate(done); return err },
		"RefreshAccessToken": func() error { _, err := c.RefreshAccessToken(done); return err },
		"Do":                 func() error { return c.Do(done, "POST", "/api/feedback", nil, nil) },
		"SubmitFeedback":     func() error { _, err := c.SubmitFeedback(done, Feedback{MessageID: "m", Score: ScoreGood}); return err },
		"OptimizeMessage":    func() error { _, err := c.OptimizeMessage(done, conversation()); return err },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, context.Canceled) && !(name == "RefreshAccessToken" && errors.Is(err, ErrNotAuthenticated)) {
			t.Errorf("%s(done context) error = %v; want context.Canceled", name, err)
		}
	}
	waitIdle(t, c) // a token request started in the background would show now
	if n := s.totalRequests(); n != 0 || trips.Load() != 0 {
		t.Errorf("%d requests (%d round trips) sent with a done context; want 0", n, trips.Load())
	}
	if _, err := c.AccessToken(context.Background()); err != nil {
		t.Fatal(err)
	}
	if tok, err := c.AccessToken(done); err != nil || tok == "" {
		t.Errorf("AccessToken(done) with a token held = %v; want it", err)
	}
	trips.Store(0)
	if err := c.Do(done, "POST", "/api/feedback", nil, nil); !errors.Is(err, context.Canceled) || trips.Load() != 0 {
		t.Errorf("Do(done) with a token held: %v after %d round trips; want context.Canceled, none", err, trips.Load())
	}
	if _, err := c.RefreshAccessToken(done); !errors.Is(err, context.Canceled) || s.Requests(pathRefresh) != 0 {
		t.Errorf("RefreshAccessToken(done) = %v after %d refreshes; want context.Canceled, none", err, s.Requests(pathRefresh))
	}
}

// TestKeyFuncErrorKeepsIdentity: an error of WithAPIKeyFunc's function
// that quotes a key is scrubbed and still matches what it wrapped.
func TestKeyFuncErrorKeepsIdentity(t *testing.T) {
	errVault := errors.New("vault sealed")
	var calls atomic.Int32
	fn := func(context.Context) (string, error) {
		if calls.Add(1) == 1 {
			return FakeAPIKey, nil
		}
		return "", fmt.Errorf("%w while rotating %s", errVault, FakeAPIKey)
	}
	_, c := setup(t, WithAPIKeyFunc(fn))
	if _, err := c.Authenticate(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := c.Authenticate(context.Background())
	if !errors.Is(err, errVault) {
		t.Errorf("errors.Is(%v, errVault) = false", err)
	}
	noSecret(t, "key function error", err.Error())
}

// TestPermanentFailuresNotRetried: an https URL answered in plain HTTP and a
// TLS version mismatch take one attempt, whatever WithMaxRetries says.
func TestPermanentFailuresNotRetried(t *testing.T) {
	plain := httptest.NewUnstartedServer(http.NotFoundHandler())
	plainConns := countConnections(plain)
	plain.Start()
	defer plain.Close()
	modern := httptest.NewUnstartedServer(http.NotFoundHandler())
	modernConns := countConnections(modern)
	modern.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	modern.StartTLS()
	defer modern.Close()
	old := modern.Client().Transport.(*http.Transport).Clone()
	old.TLSClientConfig.MaxVersion = tls.VersionTLS12

	for _, tt := range []struct {
		name  string
		url   string
		hc    *http.Client
		conns *atomic.Int32
	}{
		{"https answered in plain HTTP", strings.Replace(plain.URL, "http://", "https://", 1), nil, plainConns},
		{"TLS version mismatch", modern.URL, &http.Client{Transport: old}, modernConns},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestClient(t, WithBaseURL(tt.url), WithHTTPClient(tt.hc), WithMaxRetries(3))
			_, err := c.AccessToken(context.Background())
			if !errors.Is(err, ErrConnection) {
				t.Fatalf("error = %v; want ErrConnection", err)
			}
			if n := tt.conns.Load(); n != 1 {
				t.Errorf("connections = %d; want 1 (no retry)", n)
			}
		})
	}
}

// TestCloseEndsEveryWait: Close ends a call sleeping before a retry
// (Retry-After: 30) and a call waiting on a flight, with ErrClosed.
func TestCloseEndsEveryWait(t *testing.T) {
	s, c := setup(t)
	attempted := make(chan struct{}, 1)
	c.cfg.hooks.Attempt = func(context.Context, AttemptInfo) {
		select {
		case attempted <- struct{}{}:
		default:
		}
	}
	if _, err := c.AccessToken(context.Background()); err != nil {
		t.Fatal(err)
	}
	recv(t, attempted, "attempted")
	s.script(pathFeedback, 503, `{"error":"down"}`, map[string]string{"Retry-After": "30"})
	errc := make(chan error, 1)
	go func() {
		_, err := c.SubmitFeedback(context.Background(), Feedback{MessageID: "m", Score: ScoreGood})
		errc <- err
	}()
	recv(t, attempted, "attempted") // the 503 came: the call sleeps 30s before its retry
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("call error = %v; want ErrClosed", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not end the Retry-After sleep")
	}
}

// ---- behaviours the mutation campaign found unpinned ----

// TestExplicitJoinsOwnKind: an Authenticate that starts while an automatic
// refresh is in flight waits for it, then makes its own exchange.
func TestExplicitJoinsOwnKind(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	s, c := setup(t)
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	release := s.hold(t, pathRefresh)
	clk.Advance(time.Hour - 30*time.Second)
	if _, err := c.AccessToken(ctx); err != nil { // starts the background refresh
		t.Fatal(err)
	}
	for i := 0; s.Requests(pathRefresh) == 0; i++ {
		if i == 30000 {
			t.Fatal("no refresh after 30s")
		}
		time.Sleep(time.Millisecond)
	}
	authErr := make(chan error, 1)
	go func() { _, err := c.Authenticate(ctx); authErr <- err }()
	release()
	if err := recv(t, authErr, "Authenticate"); err != nil {
		t.Fatal(err)
	}
	if a, r := s.Requests(pathToken), s.Requests(pathRefresh); a != 2 || r != 1 {
		t.Errorf("exchanges, refreshes = %d, %d; want 2, 1 (Authenticate made its own)", a, r)
	}
}

// TestExplicitCallsBypassStore: Authenticate and RefreshAccessToken always
// reach the server, even with a fresh token in the store, and save what
// they get.
func TestExplicitCallsBypassStore(t *testing.T) {
	ctx := context.Background()
	store := &memStore{}
	s, c := setup(t, WithTokenStore(store))
	now := c.now()
	store.tok = &StoredToken{AccessToken: "stored.fresh.token", IssuedAt: now, ExpiresAt: now.Add(time.Hour), KeyID: c.keyID(FakeAPIKey)}
	a, err := c.Authenticate(ctx)
	if err != nil || a.AccessToken == "stored.fresh.token" || s.Requests(pathToken) != 1 {
		t.Fatalf("Authenticate() = %v after %d exchanges; want a token of its own from the server", err, s.Requests(pathToken))
	}
	r, err := c.RefreshAccessToken(ctx)
	if err != nil || s.Requests(pathRefresh) != 1 {
		t.Fatalf("RefreshAccessToken() = %v after %d refreshes; want one", err, s.Requests(pathRefresh))
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if store.saves != 2 || store.tok.AccessToken != r.AccessToken || store.tok.IssuedAt.IsZero() {
		t.Errorf("saves = %d, the stored token is the refreshed one: %v, IssuedAt set: %v; want 2, true, true",
			store.saves, store.tok.AccessToken == r.AccessToken, !store.tok.IssuedAt.IsZero())
	}
}

// TestURLEscapedSecretScrubbed: a server that echoes the API key query- or
// path-escaped (a key holding +, / and =, which escaping changes) has it
// scrubbed, and no 8-byte run of any form reaches the error.
func TestURLEscapedSecretScrubbed(t *testing.T) {
	// Alternating characters that both escapings change (/) and that only
	// query escaping changes (+, =): every 8-byte run of each escaped form
	// differs from the other form and from the raw key.
	key := "a/b+c/d=e/f+g/h=SECRET/i+j/k=l/m+"
	for _, form := range []string{url.QueryEscape(key), url.PathEscape(key)} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 400, map[string]string{"error": "bad key " + form + " refused"})
		}))
		c, err := NewClient(key, WithBaseURL(srv.URL))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Authenticate(context.Background())
		c.Close()
		srv.Close()
		if err == nil {
			t.Fatal("want an error")
		}
		if secretRun(err.Error(), key, url.QueryEscape(key), url.PathEscape(key)) != "" || !strings.Contains(err.Error(), "[REDACTED]") {
			t.Errorf("the error quotes an escaped form of the key (error withheld)")
		}
	}
}

// TestUUIDEdges: a UUID is hex digits and hyphens in the 8-4-4-4-12 form;
// the characters next to the hex ranges are refused.
func TestUUIDEdges(t *testing.T) {
	ok := "550e8400-e29b-41d4-a716-446655440000"
	if !isUUID(ok) || !isUUID(strings.ToUpper(ok)) || !isUUID("ffffffff-FFFF-0000-9999-aAfF00000000") {
		t.Errorf("valid UUIDs refused")
	}
	for _, b := range "gG/:@`" {
		bad := ok[:35] + string(b)
		if isUUID(bad) {
			t.Errorf("isUUID(%q) = true", bad)
		}
	}
}

// ---- what a hostile review found ----

// TestTokenAnswerEchoScrubbed: a token answer that echoes the tokens it
// brings, in its X-Request-Id, its Content-Type (which the media-type
// parser lowercases) or its token type and company, leaks no run of them to
// a hook, a log, an error or the Token.
func TestTokenAnswerEchoScrubbed(t *testing.T) {
	const access, refresh = "Acc-SECRET-MixedCase-0123456789", "Ref-SECRET-MixedCase-9876543210"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "id "+access+" "+refresh)
		if r.URL.Path == pathToken {
			writeJSON(w, 200, map[string]any{"access_token": access, "refresh_token": refresh, "expires_in": 3600,
				"token_type": "Bearer " + refresh, "company_name": "Acme " + access})
			return
		}
		w.Header().Set("Content-Type", "application/"+access+"; x="+refresh)
		w.WriteHeader(400)
	}))
	defer srv.Close()
	var logs logBuffer
	var mu sync.Mutex
	var seen []string
	c := newTestClient(t, WithBaseURL(srv.URL), WithLogger(newJSONLogger(&logs)), WithMaxRetries(0),
		WithHooks(Hooks{Attempt: func(_ context.Context, a AttemptInfo) { mu.Lock(); seen = append(seen, a.RequestID); mu.Unlock() }}))
	err := c.Do(context.Background(), "GET", "/api/x", nil, nil)
	if err == nil {
		t.Fatal("want the 400")
	}
	waitIdle(t, c)
	mu.Lock()
	defer mu.Unlock()
	for what, text := range map[string]string{"hook": strings.Join(seen, " "), "log": logs.String(), "error": err.Error(),
		"token": fmt.Sprintf("%+v %s %s", c.Token(), c.Token().TokenType, c.Token().CompanyName)} {
		if secretRun(text, access, refresh) != "" {
			t.Errorf("%s carries a run of a token (withheld)", what)
		}
	}
}

// TestCloseEndsKeyFuncWait: Close does not wait for a key function that
// ignores its context; the call waiting on that exchange gets ErrClosed.
func TestCloseEndsKeyFuncWait(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	entered := make(chan struct{}, 1)
	fn := func(context.Context) (string, error) { entered <- struct{}{}; <-release; return FakeAPIKey, nil }
	_, c := setup(t, WithAPIKeyFunc(fn))
	errc := make(chan error, 1)
	go func() { _, err := c.AccessToken(context.Background()); errc <- err }()
	recv(t, entered, "the key function")
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	recv(t, closed, "Close")
	if err := recv(t, errc, "AccessToken"); !errors.Is(err, ErrClosed) {
		t.Errorf("AccessToken() = %v; want ErrClosed", err)
	}
}

// TestDoneContextStartsNoRefresh: AccessToken with a done context returns a
// stale token it holds, but starts no background refresh for it.
func TestDoneContextStartsNoRefresh(t *testing.T) {
	clk := useFakeClock(t)
	s, c := setup(t)
	if _, err := c.AccessToken(context.Background()); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour - 30*time.Second) // stale
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if tok, err := c.AccessToken(done); err != nil || tok == "" {
		t.Fatalf("AccessToken(done) = %v; want the stale token", err)
	}
	waitIdle(t, c)
	if n := s.Requests(pathRefresh); n != 0 {
		t.Errorf("refreshes started for a done context = %d; want 0", n)
	}
}

// TestFakeServerPrintsNoToken: printing a FakeServer shows none of the
// tokens it issued, which its clients hold.
func TestFakeServerPrintsNoToken(t *testing.T) {
	s := NewFakeServer()
	c := fakeTestClient(t, s)
	if _, err := c.AccessToken(context.Background()); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	slog.New(slog.NewTextHandler(&b, nil)).Info("fake", "server", s)
	noSecret(t, "FakeServer printed", fmt.Sprintf("%v %+v %#v %s %d", s, s, s, s, s)+b.String())
}
