package apala

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

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
	if err := <-authErr; !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Authenticate() error = %v; want ErrUnauthorized", err)
	}
	if err := <-tokErr; !errors.Is(err, ErrUnauthorized) {
		t.Errorf("AccessToken() error = %v; want the flight's ErrUnauthorized", err)
	}
	if got := s.Requests(pathToken); got != 1 {
		t.Errorf("token requests = %d; want 1", got)
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
	if got := s.totalRequests(); got != 0 {
		t.Errorf("requests = %d; want 0", got)
	}
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

// memStore is a TokenStore in memory that counts its use, and can fail.
type memStore struct {
	mu           sync.Mutex
	tok          *StoredToken
	loads, saves int
	err          error
}

func (m *memStore) Load(context.Context) (*StoredToken, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.loads++
	if m.tok == nil {
		return nil, m.err
	}
	t := *m.tok
	return &t, m.err
}

func (m *memStore) Save(_ context.Context, t *StoredToken) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.saves++
	if m.err != nil {
		return m.err
	}
	c := *t
	m.tok = &c
	return nil
}

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
	<-done
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

// storeChild is the environment of a child process of the cross-process
// tests: it runs TestStoreChild.
const storeChild = "APALA_STORE_CHILD"

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
	opts := []Option{WithBaseURL(url), WithRetryBackoff(time.Millisecond, 10*time.Millisecond), WithRefreshMargin(500 * time.Millisecond)}
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

// startChildren starts n child processes in mode and returns their stdin
// and a channel that yields one line per child and event.
func startChildren(t *testing.T, n int, mode, url, path, run string) ([]*exec.Cmd, []io.WriteCloser, chan string) {
	t.Helper()
	lines := make(chan string, 4*n)
	var cmds []*exec.Cmd
	var ins []io.WriteCloser
	for i := 0; i < n; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStoreChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), storeChild+"="+mode, "APALA_STORE_PATH="+path, "APALA_STORE_URL="+url, "APALA_STORE_RUN="+run)
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if strings.HasPrefix(sc.Text(), "child: ") {
					lines <- strings.TrimPrefix(sc.Text(), "child: ")
				}
			}
			if err := cmd.Wait(); err != nil {
				lines <- "exit: " + err.Error() + ": " + stderr.String()
			}
		}()
		cmds, ins = append(cmds, cmd), append(ins, in)
		t.Cleanup(func() { _ = cmd.Process.Kill() })
	}
	return cmds, ins, lines
}

// expect reads one line per child and fails unless each is want.
func expect(t *testing.T, lines chan string, n int, want string) {
	t.Helper()
	for i := 0; i < n; i++ {
		if got := <-lines; got != want {
			t.Fatalf("a child said %q; want %q", got, want)
		}
	}
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
