package apala

// This file holds the tests of the client (apala.go) in the order of that
// file: the client and its options, the round trip (retries, errors,
// scrubbing, hostile servers, HTTPClient), the message and feedback calls;
// then the fault matrix, the fuzz targets, the soak test and the
// benchmarks. Before them are the helpers the test files share, each with
// its one job; a fixture only one test uses sits beside that test. The
// token lifecycle's tests are in auth_test.go, FakeServer's own in
// fake_test.go, and every test talks to a FakeServer (fake.go), in memory
// or mounted on a loopback socket.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	mrand "math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"
)

// ---- helpers ----

// secretMarker is in every secret the tests hand out: FakeAPIKey, every
// token FakeServer issues, the tests' own. A leak test looks for it alone.
const secretMarker = "SECRET"

// customerID is the customer of every test's requests.
const customerID = "123e4567-e89b-42d3-a456-426614174000"

// t0 and t1 are send and reply times of the tests' messages and feedback,
// in UTC and at an offset.
var (
	t0 = time.Date(2025, 1, 15, 10, 30, 0, 0, time.UTC)
	t1 = time.Date(2025, 1, 15, 11, 45, 30, 250000000, time.FixedZone("EST", -5*3600))
)

// conversation returns a valid message request, each field set: the one
// the tests of the message calls send, and check on the wire against
// conversationWire.
func conversation() MessageRequest {
	return MessageRequest{
		Messages: []Message{
			{Content: "Hi, is my loan approved?", Channel: ChannelSMS, MessageID: "m-1", SendTimestamp: t0, ReplyOrNot: true},
			{Content: "We are reviewing it.", Channel: ChannelEmail, MessageID: "m-2", SendTimestamp: t1},
		},
		Candidate:  Message{Content: "Please upload your bank statement.", Channel: ChannelOther, MessageID: "m-3", SendTimestamp: t0},
		CustomerID: customerID,
		ZipCode:    "90210",
	}
}

// conversationWire is conversation().Messages as the wire protocol puts them on the
// wire: reply_or_not as strings, times with their offsets.
const conversationWire = `[
	{"content": "Hi, is my loan approved?", "channel": "SMS", "message_id": "m-1", "send_timestamp": "2025-01-15T10:30:00+00:00", "reply_or_not": "true"},
	{"content": "We are reviewing it.", "channel": "EMAIL", "message_id": "m-2", "send_timestamp": "2025-01-15T11:45:30.250000-05:00", "reply_or_not": "false"}]`

// intp returns a pointer to n, for CustomerMetadata's optional numbers.
func intp(n int) *int { return &n }

// testServer is a FakeServer on a loopback socket, for the tests that need
// a real one: other transports, connection reuse, faults below HTTP, other
// processes. It counts the connections it accepts.
type testServer struct {
	*FakeServer
	*httptest.Server
	conns *atomic.Int32
}

// startServer starts a FakeServer on a loopback socket, closed when the
// test ends.
func startServer(tb testing.TB) *testServer {
	tb.Helper()
	s := &testServer{FakeServer: NewFakeServer()}
	s.Server = httptest.NewUnstartedServer(s.FakeServer)
	s.conns = countConnections(s.Server)
	s.Start()
	tb.Cleanup(s.Close)
	return s
}

// countConnections counts the connections srv, not yet started, accepts.
func countConnections(srv *httptest.Server) *atomic.Int32 {
	var n atomic.Int32
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			n.Add(1)
		}
	}
	return &n
}

// setup starts a FakeServer on a loopback socket and returns it with a
// client of it: newTestClient's, with the server's URL and opts.
func setup(tb testing.TB, opts ...ClientOption) (*testServer, *Client) {
	tb.Helper()
	s := startServer(tb)
	return s, newTestClient(tb, append([]ClientOption{WithBaseURL(s.URL)}, opts...)...)
}

// setKnobs runs set with s.mu held: the one way the tests change a
// FakeServer's knobs (expiresIn, noExpiry, apiKey).
// Test-only, like every method of FakeServer in this file.
func (s *FakeServer) setKnobs(set func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready()
	set()
}

// setClock moves s's clock to t0, which must not be before it (the clock
// only moves forward), and returns s.Advance.
func (s *FakeServer) setClock(t0 time.Time) (advance func(time.Duration)) {
	d := t0.Sub(s.Now())
	if d < 0 {
		panic("setClock: " + t0.String() + " is before the server's clock")
	}
	s.Advance(d)
	return s.Advance
}

// lastBody returns the body of the last request to path; nil when none
// came.
func (s *FakeServer) lastBody(path string) []byte {
	if r := s.Received(path); len(r) > 0 {
		return r[len(r)-1].Body
	}
	return nil
}

// lastHeader returns the header of the last request to path; nil when none
// came.
func (s *FakeServer) lastHeader(path string) http.Header {
	if r := s.Received(path); len(r) > 0 {
		return r[len(r)-1].Header
	}
	return nil
}

// script queues one answer for the next request to path, as Fail does, with
// any body and headers; its Content-Type is text/html when body is not
// JSON, unless header sets one.
func (s *FakeServer) script(path string, status int, body string, header map[string]string) {
	h := http.Header{}
	for k, v := range header {
		h.Set(k, v)
	}
	if h.Get("Content-Type") == "" && !json.Valid([]byte(body)) {
		h.Set("Content-Type", "text/html; charset=utf-8")
	}
	s.Respond(path, 1, FakeResponse{Status: status, Header: h, Body: body})
}

// revokeAccess makes the server refuse every access token issued so far
// and keep the refresh tokens (which live a week): it moves the server's
// clock past the access tokens' lifetime.
func (s *FakeServer) revokeAccess() {
	s.mu.Lock()
	d := s.lifetime
	s.mu.Unlock()
	s.Advance(d)
}

// hold makes the requests to path wait, once counted, until the returned
// function is called or the test ends. It takes s's hook.
func (s *FakeServer) hold(tb testing.TB, path string) (release func()) {
	ch := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	tb.Cleanup(release)
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == path {
			<-ch
		}
		return false
	})
	return release
}

// totalRequests reports how many requests s received, on every path.
func (s *FakeServer) totalRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// writeJSON answers a request with v as JSON: for a hook, or a server of a
// test's own.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// newTestClient returns a client with FakeAPIKey and FakeCompanyGUID that
// retries after 1ms to 5ms, so that tests stay fast, closed when the test
// ends. opts come last and win: WithBaseURL for a server on a socket,
// WithHTTPClient for a transport of the test's own. Only a test of building
// a client, or one that needs another key, calls NewClient itself.
func newTestClient(tb testing.TB, opts ...ClientOption) *Client {
	tb.Helper()
	all := append([]ClientOption{WithRetryBackoff(time.Millisecond, 5*time.Millisecond), WithCompanyGUID(FakeCompanyGUID)}, opts...)
	c, err := NewClient(FakeAPIKey, all...)
	if err != nil {
		tb.Fatalf("NewClient() error = %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// fakeTestClient returns an in-memory client of s, closed when the test ends.
func fakeTestClient(tb testing.TB, s *FakeServer, opts ...ClientOption) *Client {
	tb.Helper()
	c, err := s.NewClient(opts...)
	if err != nil {
		tb.Fatalf("NewClient() error = %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// holdToken makes c hold a token pair of the fake's company, as if a token
// request sent age ago on c's clock had been answered with it and
// expiresIn, and returns the pair; nothing is sent. With a FakeServer's
// grant the pair is one the server accepts.
func holdToken(c *Client, access, refresh string, expiresIn int, age time.Duration) *tokenPair {
	p := c.newPair(access, refresh, "Bearer", expiresIn, c.now().Add(-age))
	p.companyID, p.companyName = FakeCompanyGUID, fakeCompanyName
	c.pair.Store(p)
	return p
}

// jwtExpiring returns an unsigned JWT whose exp claim is at.
func jwtExpiring(at time.Time) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"none"}`)) + "." +
		enc.EncodeToString([]byte(fmt.Sprintf(`{"exp":%d}`, at.Unix()))) + ".SECRETsig"
}

// fakeClock is a settable clock; its times carry no monotonic reading.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) Since(t time.Time) time.Duration { return f.Now().Sub(t) }

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = f.t.Add(d)
}

// useFakeClock makes clients created by the test read a fake clock. Such
// tests do not run in parallel: the clock variables are package-wide.
func useFakeClock(t *testing.T) *fakeClock {
	t.Helper()
	clk := &fakeClock{t: time.Date(2025, 1, 15, 10, 0, 0, 0, time.UTC)}
	timeNow, timeSince = clk.Now, clk.Since
	t.Cleanup(func() { timeNow, timeSince = time.Now, time.Since })
	return clk
}

// waitIdle waits until no token flight is in progress and the goroutine of
// the last one has ended. It polls; the bound
// is a safety net against a hung test, not a timing assertion.
func waitIdle(t *testing.T, c *Client) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for c.flight.Load() != nil {
		if time.Now().After(deadline) {
			t.Fatal("token flight still in progress after 30s")
		}
		time.Sleep(time.Millisecond)
	}
	// The flight's goroutine goes on after it cleared c.flight: it logs
	// and reports to the hooks. Idle is when it has ended.
	done := make(chan struct{})
	go func() { c.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("token flight's goroutine still running after 30s")
	}
}

// recv receives from ch, failing the test instead of hanging when nothing
// comes within 30s: a bound against a hung test, not a timing assertion.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: nothing after 30s", what)
		panic("unreachable")
	}
}

// settle waits for the goroutine count to come back to at most n, and fails
// with the stacks if it does not within 30s: a bound against a hung test,
// not a timing assertion.
func settle(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < 3000; i++ {
		if runtime.NumGoroutine() <= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	buf := make([]byte, 1<<20)
	t.Errorf("goroutines = %d; want <= %d\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
}

// logBuffer is a concurrency-safe buffer for a slog handler.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// records decodes the JSON log lines in l.
func (l *logBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %v", err)
		}
		out = append(out, m)
	}
	return out
}

// newJSONLogger returns a logger writing every level as JSON lines to l.
func newJSONLogger(l *logBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// noSecret fails the test when s holds a secret; it never prints s.
func noSecret(t *testing.T, what, s string) {
	t.Helper()
	if strings.Contains(s, secretMarker) {
		t.Errorf("%s holds a secret (output withheld)", what)
	}
}

// secretRun returns a run of 8 bytes of one of secrets found in s, compared
// without case, or "" when there is none. It never returns the run itself
// to a failure message: callers only test it for "".
func secretRun(s string, secrets ...string) string {
	s = strings.ToLower(s)
	for _, secret := range secrets {
		secret = strings.ToLower(secret)
		for i := 0; i+8 <= len(secret); i++ {
			if strings.Contains(s, secret[i:i+8]) {
				return secret[i : i+8]
			}
		}
	}
	return ""
}

// ctxKey is a context key of the tests.
type ctxKey struct{}

// sameJSON fails the test unless got and want hold the same JSON value. API
// bodies carry no secret, so both may be printed.
func sameJSON(t *testing.T, what string, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: body is not JSON: %v", what, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("%s: golden is not JSON: %v", what, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s body =\n%s\nwant\n%s", what, got, want)
	}
}

// httpClientPost posts body to the feedback endpoint of the server at
// baseURL through hc, as a caller of HTTPClient would, with key as its
// Idempotency-Key, and returns the request and the answer's status.
func httpClientPost(t *testing.T, hc *http.Client, baseURL string, body io.Reader, key string) (*http.Request, int) {
	t.Helper()
	req, _ := http.NewRequest("POST", baseURL+"/api/feedback", body)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return req, resp.StatusCode
}

// fakeTestPost sends one request straight to s.ServeHTTP. header entries
// with an empty value are left out (Content-Type defaults to JSON).
// wireExpiresIn exchanges FakeAPIKey with s directly and returns the
// expires_in of the answer; ok is false when it has none.
func wireExpiresIn(t *testing.T, s *FakeServer) (n int, ok bool) {
	t.Helper()
	w := fakeTestPost(s, "POST", pathToken, `{"api_key":"`+FakeAPIKey+`"}`, nil)
	var out struct {
		ExpiresIn *int `json:"expires_in"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil || w.Code != 200 {
		t.Fatalf("token exchange: status %d, decoding: %v", w.Code, err)
	}
	if out.ExpiresIn == nil {
		return 0, false
	}
	return *out.ExpiresIn, true
}

func fakeTestPost(s *FakeServer, method, path, body string, header map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		if v == "" {
			r.Header.Del(k)
		} else {
			r.Header.Set(k, v)
		}
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

// fakeTestShow returns a body fit for a failure message: withheld when it
// holds a secret.
func fakeTestShow(body string) string {
	if strings.Contains(body, secretMarker) {
		return "(body withheld: it holds a secret)"
	}
	return body
}

// fakeTestError returns the "error" text of a JSON error body.
func fakeTestError(t *testing.T, body []byte) string {
	t.Helper()
	var v struct {
		Error *string `json:"error"`
	}
	if err := json.Unmarshal(body, &v); err != nil || v.Error == nil {
		t.Fatalf("error body %s is not {\"error\": ...}", fakeTestShow(string(body)))
	}
	return *v.Error
}

// fakeTestRequest returns the valid request FakeServer's own tests send,
// metadata included, whose answers they check.
func fakeTestRequest() MessageRequest {
	t0 := time.Date(2025, 1, 15, 10, 30, 0, 0, time.UTC)
	repeat, state := true, 5
	return MessageRequest{
		CustomerID: customerID,
		Messages: []Message{
			{Content: "Hi, is my loan approved?", Channel: ChannelSMS, MessageID: "m-1", SendTimestamp: t0, ReplyOrNot: true},
			{Content: "We are reviewing your application.", Channel: ChannelSMS, MessageID: "m-2", SendTimestamp: t0.Add(time.Minute)},
		},
		Candidate: Message{Content: "Your payment is due on Friday.", Channel: ChannelSMS, MessageID: "m-3", SendTimestamp: t0.Add(time.Hour)},
		ZipCode:   "94107",
		Metadata:  &CustomerMetadata{IsRepeatBorrower: &repeat, StateID: &state, CreditScoreBin: CreditScore650To700, AgeBin: Age25To30},
	}
}

// cannedTransport answers every request in memory with one fixed response
// (status 0 means 200), so that a benchmark through it measures the client
// alone and a fuzz target runs without a network.
type cannedTransport struct {
	status int
	header http.Header
	body   []byte
}

// jsonHeader is the header of a cannedTransport's JSON answer.
var jsonHeader = http.Header{"Content-Type": {"application/json"}}

func (t *cannedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	status := t.status
	if status == 0 {
		status = http.StatusOK
	}
	return &http.Response{
		StatusCode: status, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        t.header.Clone(), // a new one per answer, as from a real transport
		Body:          io.NopCloser(bytes.NewReader(t.body)),
		ContentLength: int64(len(t.body)), Request: r,
	}, nil
}

// countingTransport counts attempts per path, response bodies not yet
// closed and the bytes read from them. Requests for a path in refuse go to
// an address where nothing listens, for a real "connection refused".
type countingTransport struct {
	base   http.RoundTripper
	dead   string // host:port with no listener
	refuse string // path whose requests are refused

	mu       sync.Mutex
	attempts map[string]int
	open     atomic.Int64
	read     atomic.Int64
}

var _ http.RoundTripper = (*countingTransport)(nil)

func (t *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.mu.Lock()
	t.attempts[r.URL.Path]++
	t.mu.Unlock()
	if r.URL.Path == t.refuse {
		r = r.Clone(r.Context())
		r.URL.Host, r.Host = t.dead, ""
	}
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	t.open.Add(1)
	resp.Body = &countedBody{ReadCloser: resp.Body, open: &t.open, read: &t.read}
	return resp, nil
}

// count reports the attempts made on path.
func (t *countingTransport) count(path string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.attempts[path]
}

// countedBody is a response body of countingTransport's.
type countedBody struct {
	io.ReadCloser
	once sync.Once
	open *atomic.Int64
	read *atomic.Int64
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.read.Add(int64(n))
	return n, err
}

func (b *countedBody) Close() error {
	b.once.Do(func() { b.open.Add(-1) })
	return b.ReadCloser.Close()
}

// deadAddr returns an address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// loopbackOracle is the tests' own judge of a loopback host, kept apart from
// isLoopback so that it cannot share its mistakes: the name localhost in any
// case, a dotted-quad IPv4 address in 127.0.0.0/8 (parsed here by hand), or
// the IPv6 address ::1 or an IPv4-mapped 127.0.0.0/8 address
// (::ffff:127.x.y.z), its 16 bytes checked here. Only the IPv6 parsing is
// borrowed, from net.ParseIP; isLoopback's verdict is not.
//
// A long s (U+017F) counts as an s: strings.EqualFold folds it so, and the
// IDNA mapping net/http applies before dialing turns it into an s too, so
// http://localhoſt reaches localhost and nothing leaves the machine.
func loopbackOracle(host string) bool {
	var b strings.Builder
	for _, r := range host {
		switch {
		case 'A' <= r && r <= 'Z':
			r += 'a' - 'A'
		case r == '\u017f':
			r = 's'
		}
		b.WriteRune(r)
	}
	if b.String() == "localhost" {
		return true
	}
	if !strings.Contains(host, ":") {
		// IPv4: exactly four decimal fields of 0 to 255, no leading zero.
		fields := strings.Split(host, ".")
		if len(fields) != 4 {
			return false
		}
		for _, f := range fields {
			if f == "" || len(f) > 3 || (len(f) > 1 && f[0] == '0') || strings.Trim(f, "0123456789") != "" {
				return false
			}
			if n, _ := strconv.Atoi(f); n > 255 {
				return false
			}
		}
		return fields[0] == "127"
	}
	ip := net.ParseIP(host)
	if len(ip) != net.IPv6len {
		return false
	}
	for _, x := range ip[:10] {
		if x != 0 {
			return false
		}
	}
	switch {
	case ip[10] == 0xff && ip[11] == 0xff: // ::ffff:a.b.c.d
		return ip[12] == 127
	case ip[10] == 0 && ip[11] == 0: // ::1
		return ip[12] == 0 && ip[13] == 0 && ip[14] == 0 && ip[15] == 1
	}
	return false
}

// visibleASCII is the fuzz targets' own test of a token that can travel in
// an Authorization header: not empty, every byte printable ASCII other than
// a space. It is written apart from validToken, the check under test.
func visibleASCII(s string) bool {
	for _, r := range []byte(s) {
		if r < '!' || r > '~' {
			return false
		}
	}
	return s != ""
}

// checkHeld fails unless the token the client holds is well formed.
func checkHeld(t *testing.T, c *Client) {
	t.Helper()
	tok := c.Token()
	if !visibleASCII(tok.AccessToken) {
		t.Fatalf("success with an invalid access token stored")
	}
	if p := c.pair.Load(); p.bearer[0] != "Bearer "+p.access || p.staleAt > p.invalidAt {
		t.Fatalf("inconsistent token pair: stale after invalid, or a wrong header")
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

// storeChild is the environment of a child process of the cross-process
// tests: it runs TestStoreChild.
const storeChild = "APALA_STORE_CHILD"

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
		if got := recv(t, lines, "lines"); got != want {
			t.Fatalf("a child said %q; want %q", got, want)
		}
	}
}

// benchTokenReads measures AccessToken from one goroutine, then from
// GOMAXPROCS goroutines at once.
func benchTokenReads(b *testing.B, c *Client) {
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := c.AccessToken(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.AccessToken(ctx); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// benchReply is a feedback answer, for the benchmarks of a round trip; they
// send a benchFeedback and decode the fake's fakeFeedbackOut, so that Do
// and the hand-written baseline it is compared with do the same work.
var benchReply = []byte(`{"id":"fb-0001","message_id":"m1","customer_responded":true,"score":"good","actual_sent_message":null,"positive_rewards":[],"send_timestamp":null,"reply_timestamp":null,"inserted_at":"2025-01-15T10:30:00.123456"}`)

// benchFeedback is a feedback request body of the benchmarks.
type benchFeedback struct {
	MessageID         string `json:"message_id"`
	CustomerResponded bool   `json:"customer_responded"`
	Score             string `json:"score"`
}

// handPost is the baselines' hand-written round trip: the request Do puts
// on the wire (the same headers, a random Idempotency-Key, a per-request
// timeout), written with net/http and encoding/json alone.
func handPost(b *testing.B, hc *http.Client, url string, body []byte, out any) {
	var key [16]byte
	_, _ = rand.Read(key[:])
	rctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, "POST", url, bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer a.b.c")
	req.Header.Set("Idempotency-Key", hex.EncodeToString(key[:]))
	resp, err := hc.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(out)
	_, _ = io.Copy(io.Discard, resp.Body)
	if err != nil || resp.StatusCode != 200 {
		b.Fatal(err, resp.StatusCode)
	}
}

// ---- the client and its options ----

func TestNewClient(t *testing.T) {
	tests := []struct {
		name    string
		key     string
		opts    []ClientOption
		wantErr string // substring; "" means success
		is      error
	}{
		{name: "defaults", key: "k"},
		{name: "empty key", key: "", wantErr: "missing API key", is: ErrMissingAPIKey},
		{name: "empty key is a config error", key: "", wantErr: "missing API key", is: ErrConfig},
		{name: "https", key: "k", opts: []ClientOption{WithBaseURL("https://api.example.com")}},
		{name: "https with prefix", key: "k", opts: []ClientOption{WithBaseURL("https://gw.example/apala/")}},
		{name: "loopback v4", key: "k", opts: []ClientOption{WithBaseURL("http://127.0.0.9:4000")}},
		{name: "loopback v6", key: "k", opts: []ClientOption{WithBaseURL("http://[::1]:4000")}},
		{name: "localhost", key: "k", opts: []ClientOption{WithBaseURL("http://LOCALHOST")}},
		{name: "remote http", key: "k", opts: []ClientOption{WithBaseURL("http://api.example.com")}, wantErr: "not loopback", is: ErrConfig},
		{name: "remote http allowed", key: "k", opts: []ClientOption{WithBaseURL("http://api.example.com"), WithInsecureHTTP()}},
		{name: "relative", key: "k", opts: []ClientOption{WithBaseURL("/api")}, wantErr: "absolute http", is: ErrConfig},
		{name: "ftp", key: "k", opts: []ClientOption{WithBaseURL("ftp://example.com")}, wantErr: "absolute http", is: ErrConfig},
		{name: "no host", key: "k", opts: []ClientOption{WithBaseURL("https://")}, wantErr: "no host", is: ErrConfig},
		{name: "user info", key: "k", opts: []ClientOption{WithBaseURL("https://bob:hunter2@example.com")}, wantErr: "user info", is: ErrConfig},
		{name: "unparsable", key: "k", opts: []ClientOption{WithBaseURL("https://bob:hunter2@exa mple.com/%zz")}, wantErr: "base URL", is: ErrConfig},
		{name: "query", key: "k", opts: []ClientOption{WithBaseURL("https://example.com/?a=1")}, wantErr: "query", is: ErrConfig},
		{name: "negative margin", key: "k", opts: []ClientOption{WithRefreshMargin(-time.Second)}, wantErr: "WithRefreshMargin", is: ErrConfig},
		{name: "negative retries", key: "k", opts: []ClientOption{WithMaxRetries(-1)}, wantErr: "WithMaxRetries", is: ErrConfig},
		{name: "zero backoff", key: "k", opts: []ClientOption{WithRetryBackoff(0, time.Second)}, wantErr: "WithRetryBackoff", is: ErrConfig},
		{name: "inverted backoff", key: "k", opts: []ClientOption{WithRetryBackoff(time.Second, time.Millisecond)}, wantErr: "WithRetryBackoff", is: ErrConfig},
		{name: "negative timeout", key: "k", opts: []ClientOption{WithTimeout(-1)}, wantErr: "WithTimeout", is: ErrConfig},
		{name: "bad company", key: "k", opts: []ClientOption{WithCompanyGUID("acme")}, wantErr: "WithCompanyGUID", is: ErrConfig},
		{name: "zero option", key: "k", opts: []ClientOption{nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClient(tt.key, tt.opts...)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("NewClient() error = %v; want nil", err)
				}
				c.Close()
				return
			}
			if err == nil {
				c.Close()
				t.Fatalf("NewClient() error = nil; want %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "apala: ") {
				t.Errorf("NewClient() error = %q; want it to contain %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("NewClient() error shows the URL's password")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
			}
		})
	}
}

// TestBaseURLLoopback: http:// without WithInsecureHTTP is accepted for a
// loopback host and refused, for that reason, for every other host, however
// close to loopback it looks. The same URL is accepted with WithInsecureHTTP,
// and the table is checked against loopbackOracle, which FuzzBaseURL uses.
//
// Decisions: the name must be localhost exactly (any case): localhost.,
// localhost.localdomain and every name under a domain are refused, as are the
// numeric spellings a resolver may or may not read as 127.0.0.1 (0x7f.0.0.1,
// 2130706433, 127.1, leading zeros) and a zoned ::1; the IPv4-mapped
// [::ffff:127.0.0.1] is accepted: it is 127.0.0.1, and dialing it goes there.
func TestBaseURLLoopback(t *testing.T) {
	tests := []struct {
		host   string
		accept bool
	}{
		{"localhost", true},
		{"LOCALHOST", true},
		{"LocalHost", true},
		{"localho\u017ft", true}, // long s: see loopbackOracle
		{"127.0.0.1", true},
		{"127.0.0.0", true},
		{"127.1.2.3", true},
		{"127.255.255.254", true},
		{"127.255.255.255", true},
		{"[::1]", true},
		{"[0:0:0:0:0:0:0:1]", true},
		{"[::0001]", true},
		{"[::ffff:127.0.0.1]", true},
		{"[::FFFF:7f00:1]", true},
		{"[::ffff:127.255.0.1]", true},

		{"localhost.evil.com", false},
		{"localhost.localdomain", false},
		{"localhost.", false},
		{"localhost-evil.com", false},
		{"evil-localhost", false},
		{"xlocalhost", false},
		{"localhostx", false},
		{"127.0.0.1.nip.io", false},
		{"127.0.0.1.evil.com", false},
		{"127.0.0.1.", false},
		{"0x7f.0.0.1", false},
		{"0x7f000001", false},
		{"2130706433", false},
		{"017700000001", false},
		{"0177.0.0.1", false},
		{"127.000.000.001", false},
		{"127.1", false},
		{"127.0.1", false},
		{"128.0.0.1", false},
		{"126.255.255.255", false},
		{"0.0.0.0", false},
		{"10.0.0.1", false},
		{"api.example.com", false},
		{"[::]", false},
		{"[::2]", false},
		{"[::127.0.0.1]", false},
		{"[::ffff:128.0.0.1]", false},
		{"[::1%25lo]", false},
		{"[fe80::1]", false},
	}
	for _, tt := range tests {
		raw := "http://" + tt.host + ":4000"
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("url.Parse(%q): %v", raw, err)
		}
		if got := loopbackOracle(u.Hostname()); got != tt.accept {
			t.Errorf("loopbackOracle(%q) = %v; want %v", u.Hostname(), got, tt.accept)
		}
		c, err := NewClient("k", WithBaseURL(raw))
		switch {
		case tt.accept && err != nil:
			t.Errorf("NewClient(%s) error = %v; want it accepted (loopback)", raw, err)
		case !tt.accept && err == nil:
			t.Errorf("NewClient(%s) accepted clear-text HTTP; want it refused (not loopback)", raw)
		case !tt.accept && !strings.Contains(err.Error(), "not loopback"):
			t.Errorf("NewClient(%s) error = %v; want it refused as not loopback", raw, err)
		}
		if err == nil {
			c.Close()
		}
		c, err = NewClient("k", WithBaseURL(raw), WithInsecureHTTP())
		if err != nil {
			t.Errorf("NewClient(%s, WithInsecureHTTP()) error = %v; want it accepted", raw, err)
			continue
		}
		c.Close()
	}
}

func TestNewClientFromEnv(t *testing.T) {
	ctx := context.Background()
	t.Setenv(EnvAPIKey, "")
	if _, err := NewClientFromEnv(); !errors.Is(err, ErrMissingAPIKey) || !strings.Contains(err.Error(), EnvAPIKey) {
		t.Errorf("NewClientFromEnv() without key: error = %v; want ErrMissingAPIKey naming %s", err, EnvAPIKey)
	}

	s := startServer(t)
	t.Setenv(EnvAPIKey, FakeAPIKey)
	t.Setenv(EnvBaseURL, s.URL)
	t.Setenv(EnvCompanyGUID, FakeCompanyGUID)
	c, err := NewClientFromEnv()
	if err != nil {
		t.Fatalf("NewClientFromEnv() error = %v", err)
	}
	defer c.Close()
	if got := c.CompanyGUID(); got != FakeCompanyGUID {
		t.Errorf("CompanyGUID() = %q; want %q", got, FakeCompanyGUID)
	}
	if _, err := c.Authenticate(ctx); err != nil {
		t.Fatalf("Authenticate() error = %v", err)
	}

	// Options win over the environment.
	other := "11111111-2222-4333-8444-555555555555"
	t.Setenv(EnvBaseURL, "http://api.example.com") // would be refused
	c2, err := NewClientFromEnv(WithBaseURL(s.URL), WithCompanyGUID(other))
	if err != nil {
		t.Fatalf("NewClientFromEnv(options) error = %v", err)
	}
	defer c2.Close()
	if got := c2.CompanyGUID(); got != other {
		t.Errorf("CompanyGUID() = %q; want the option's %q", got, other)
	}
}

func TestBaseURLPrefixKept(t *testing.T) {
	ctx := context.Background()
	var paths []string
	var mu sync.Mutex
	s := NewFakeServer()
	proxy := httptest.NewServer(http.StripPrefix("/apala", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		s.ServeHTTP(w, r)
	})))
	defer proxy.Close()
	c := newTestClient(t, WithBaseURL(proxy.URL+"/apala/"))
	if err := c.Do(ctx, "POST", "/api/feedback", map[string]any{"message_id": "m", "customer_responded": true, "score": "good"}, nil); err != nil {
		t.Fatalf("Do() error = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{pathToken, "/api/feedback"}; fmt.Sprint(paths) != fmt.Sprint(want) {
		t.Errorf("paths under the prefix = %v; want %v", paths, want)
	}
}

// TestOptionScope: an option given where it does not apply does not
// compile: each misplaced option below is a compile error of its own, in a
// program that uses the package as a user would; the same program with
// the options in their places compiles.
func TestOptionScope(t *testing.T) {
	if testing.Short() {
		t.Skip("builds programs: not in -short")
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	misplaced := []string{
		`c.OptimizeMessage(ctx, apala.MessageRequest{}, apala.WithLogger(nil))`,
		`c.Do(ctx, "GET", "/x", nil, nil, apala.WithBaseURL("https://x.example"))`,
		`c.SubmitFeedback(ctx, apala.Feedback{}, apala.WithCompanyGUID(""))`,
		`c.ProcessMessage(ctx, apala.MessageRequest{}, apala.WithHooks(apala.Hooks{}))`,
		`apala.NewClient("k", apala.WithIdempotencyKey("k"))`,
		`apala.NewClientFromEnv(apala.WithResponseInfo(nil))`,
		`s.NewClient(apala.WithIdempotencyKey("k"))`,
	}
	placed := []string{
		`c.OptimizeMessage(ctx, apala.MessageRequest{}, apala.WithMaxRetries(1), apala.WithIdempotencyKey("k"), apala.WithResponseInfo(nil))`,
		`c.Do(ctx, "GET", "/x", nil, nil, apala.WithTimeout(0), apala.WithHeader("X-A", "b"), apala.WithRetryBackoff(1, 2))`,
		`apala.NewClient("k", apala.WithLogger(nil), apala.WithMaxRetries(1), apala.WithHeader("X-A", "b"), nil)`,
		`s.NewClient(apala.WithBaseURL("http://localhost"), apala.WithTimeout(1))`,
	}
	program := func(calls []string) string {
		var b strings.Builder
		b.WriteString("package main\n\nimport (\n\t\"context\"\n\n\tapala \"github.com/apala-api/apala-go\"\n)\n\nfunc main() {\n")
		b.WriteString("\tctx := context.Background()\n\ts := apala.NewFakeServer()\n\tc, _ := s.NewClient()\n\t_, _, _ = ctx, s, c\n")
		for _, call := range calls {
			b.WriteString("\t_ = func() { " + call + " }\n")
		}
		b.WriteString("}\n")
		return b.String()
	}
	build := func(name string, calls []string) (string, error) {
		t.Helper()
		tmp := t.TempDir()
		mod := "module example.com/user\n\ngo 1.21\n\nrequire github.com/apala-api/apala-go v0.0.0\n\nreplace github.com/apala-api/apala-go => " + dir + "\n"
		for file, text := range map[string]string{"go.mod": mod, "main.go": program(calls)} {
			if err := os.WriteFile(filepath.Join(tmp, file), []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		cmd := exec.Command("go", "build", "-gcflags=-e", "-o", os.DevNull, ".")
		cmd.Dir = tmp
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := build("placed", placed); err != nil {
		t.Fatalf("options in their places: build failed: %v\n%s", err, out)
	}
	out, err := build("misplaced", misplaced)
	if err == nil {
		t.Fatal("misplaced options: the program compiled")
	}
	for i := range misplaced {
		// The calls start on line 14 of main.go.
		if line := fmt.Sprintf("main.go:%d:", 14+i); !strings.Contains(out, line) {
			t.Errorf("misplaced %s compiled; build output:\n%s", misplaced[i], out)
		}
	}
}

// TestConfigErrors: an invalid option value is an error matching ErrConfig,
// not a *ValidationError, from NewClient or from the call given it, and
// nothing is sent.
func TestConfigErrors(t *testing.T) {
	ctx := context.Background()
	s := NewFakeServer()
	c := fakeTestClient(t, s)
	bad := map[string]CallOption{
		"WithHeader":         WithHeader("Authorization", "Bearer x"),
		"WithIdempotencyKey": WithIdempotencyKey(""),
		"WithMaxRetries":     WithMaxRetries(-1),
		"WithTimeout":        WithTimeout(-time.Second),
		"WithRetryBackoff":   WithRetryBackoff(time.Second, time.Millisecond),
	}
	check := func(what, name string, err error) {
		t.Helper()
		if !errors.Is(err, ErrConfig) || errors.As(err, new(*ValidationError)) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s with %s: error = %v; want an ErrConfig naming %s, not a *ValidationError", what, name, err, name)
		}
	}
	for name, o := range bad {
		check("OptimizeMessage", name, func() error { _, err := c.OptimizeMessage(ctx, conversation(), o); return err }())
		check("Do", name, c.Do(ctx, "POST", "/api/feedback", nil, nil, o))
	}
	if n := s.totalRequests(); n != 0 {
		t.Errorf("requests = %d; want 0", n)
	}
	for _, h := range [][2]string{{"Content-Type", "x"}, {"content-length", "1"}, {"Host", "x"}, {"Connection", "close"},
		{"Transfer-Encoding", "chunked"}, {"Upgrade", "h2c"}, {"X-Ok", "a\r\nX-Evil: 1"}, {"X-Ok", "nul\x00"}, {"Bad Name", "x"}, {"", "x"}} {
		_, err := NewClient("k", WithHeader(h[0], h[1]))
		check("NewClient", "WithHeader", err)
	}
	// Nil arguments mean the defaults.
	if _, err := NewClient("k", WithHTTPClient(nil), WithLogger(nil), WithTokenStore(nil), WithAPIKeyFunc(nil)); err != nil {
		t.Errorf("NewClient(nil arguments) error = %v", err)
	}
	if err := c.Do(ctx, "POST", "/api/feedback", nil, nil, WithResponseInfo(nil), nil); err == nil || errors.Is(err, ErrConfig) {
		t.Errorf("Do(WithResponseInfo(nil)) error = %v; want the server's answer", err)
	}
}

// TestCallOptions: a call's retries, timeout, headers and idempotency key
// are its own; the client's apply to the others, token requests included.
func TestCallOptions(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t, WithHeader("X-Team", "lending"), WithHeader("User-Agent", "svc/2"))
	fb := Feedback{MessageID: "m", Score: ScoreGood}
	for i := 0; i < 3; i++ {
		s.Fail("/api/feedback", 503, "busy")
	}
	var info ResponseInfo
	if _, err := c.SubmitFeedback(ctx, fb, WithMaxRetries(0), WithResponseInfo(&info)); !errors.Is(err, ErrServer) || info.Attempts != 1 {
		t.Fatalf("with WithMaxRetries(0): error %v after %d attempts; want ErrServer after 1", err, info.Attempts)
	}
	if _, err := c.SubmitFeedback(ctx, fb, WithResponseInfo(&info)); err != nil || info.Attempts != 3 || info.StatusCode != 200 {
		t.Fatalf("with the client's 2 retries: error %v after %d attempts, status %d; want success after 3", err, info.Attempts, info.StatusCode)
	}
	if h := s.lastHeader(pathToken); h.Get("X-Team") != "lending" || h.Get("User-Agent") != "svc/2" {
		t.Errorf("token request headers = %v; want the client's X-Team and User-Agent", h)
	}
	if _, err := c.SubmitFeedback(ctx, fb, WithHeader("X-Team", "risk"), WithHeader("X-Call", "1"), WithIdempotencyKey("order-42")); err != nil {
		t.Fatal(err)
	}
	h := s.lastHeader("/api/feedback")
	if h.Get("X-Team") != "risk" || h.Get("X-Call") != "1" || h.Get("Idempotency-Key") != "order-42" {
		t.Errorf("call headers = %v; want X-Team risk, X-Call 1, Idempotency-Key order-42", h)
	}
	if _, err := c.SubmitFeedback(ctx, fb); err != nil {
		t.Fatal(err)
	}
	if h := s.lastHeader("/api/feedback"); h.Get("X-Team") != "lending" || h.Get("X-Call") != "" || h.Get("Idempotency-Key") == "order-42" {
		t.Errorf("the next call's headers = %v; want the client's only and a new key", h)
	}
	// A call's idempotency key stays across its retries.
	var keys []string
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/api/feedback" {
			return false
		}
		keys = append(keys, r.Header.Get("Idempotency-Key"))
		if len(keys) < 3 {
			writeJSON(w, 503, map[string]string{"error": "busy"})
			return true
		}
		return false
	})
	if _, err := c.SubmitFeedback(ctx, fb, WithIdempotencyKey("order-43")); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(keys) != "[order-43 order-43 order-43]" {
		t.Errorf("keys across retries = %v; want order-43 three times", keys)
	}
	// A call's timeout is its own: a 1ns limit fails that call, not the next.
	if err := c.Do(ctx, "POST", "/api/feedback", map[string]any{"message_id": "m", "customer_responded": true, "score": "good"}, nil, WithTimeout(time.Nanosecond), WithMaxRetries(0)); !errors.Is(err, ErrConnection) {
		t.Errorf("with a 1ns timeout: error = %v; want ErrConnection", err)
	}
	if _, err := c.SubmitFeedback(ctx, fb); err != nil {
		t.Errorf("the next call: %v", err)
	}
}

// TestResponseInfo: filled on success and on error; Attempts counts the
// call's own attempts, the 401 replay included, token requests not.
func TestResponseInfo(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	var info ResponseInfo
	fb := Feedback{MessageID: "m", Score: ScoreGood}
	if _, err := c.SubmitFeedback(ctx, fb, WithResponseInfo(&info)); err != nil || info.Attempts != 1 || info.StatusCode != 200 || info.Header.Get("Content-Type") != "application/json; charset=utf-8" {
		t.Fatalf("first call: %v, %+v; want 1 attempt, status 200, the answer's header", err, info)
	}
	s.RevokeTokens()
	if _, err := c.SubmitFeedback(ctx, fb, WithResponseInfo(&info)); err != nil || info.Attempts != 2 || info.StatusCode != 200 {
		t.Fatalf("after a revocation: %v, %+v; want 2 attempts (the replay), status 200", err, info)
	}
	c.Close()
	if _, err := c.SubmitFeedback(ctx, fb, WithResponseInfo(&info)); !errors.Is(err, ErrClosed) || info.Attempts != 0 || info.StatusCode != 0 || info.Header != nil {
		t.Fatalf("after Close: %v, %+v; want ErrClosed and no answer", err, info)
	}
	if info.Duration < 0 {
		t.Errorf("Duration = %v; want it measured", info.Duration)
	}
}

// TestHooks: Attempt sees every attempt, token requests included, with the
// wait before the next; Token sees each token request once, in the context
// of the caller that started it, values kept and cancellation removed.
func TestHooks(t *testing.T) {
	ctx := context.Background()
	var (
		mu       sync.Mutex
		attempts []AttemptInfo
		tokens   []TokenInfo
		values   []any
	)
	hooks := Hooks{
		Attempt: func(ctx context.Context, a AttemptInfo) { mu.Lock(); attempts = append(attempts, a); mu.Unlock() },
		Token: func(ctx context.Context, ti TokenInfo) {
			mu.Lock()
			tokens = append(tokens, ti)
			values = append(values, ctx.Value(ctxKey{}))
			mu.Unlock()
		},
	}
	s, c := setup(t, WithHooks(hooks))
	s.Fail("/api/feedback", 503, "busy")
	// A token request reports once it ended, maybe after its callers went
	// on: waitIdle orders its reports before the call's.
	if _, err := c.AccessToken(context.WithValue(ctx, ctxKey{}, "trace-1")); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, c)
	if _, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RefreshAccessToken(context.WithValue(ctx, ctxKey{}, "trace-2")); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, c)
	mu.Lock()
	defer mu.Unlock()
	var got []string
	for _, a := range attempts {
		got = append(got, fmt.Sprintf("%s#%d:%d/wait=%v/err=%v", a.Path, a.Attempt, a.StatusCode, a.RetryIn > 0, a.Err != nil))
	}
	want := []string{pathToken + "#1:200/wait=false/err=false", "/api/feedback#1:503/wait=true/err=true",
		"/api/feedback#2:200/wait=false/err=false", pathRefresh + "#1:200/wait=false/err=false"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("attempts = %v; want %v", got, want)
	}
	if len(tokens) != 2 || tokens[0].Refresh || !tokens[1].Refresh || tokens[0].Err != nil || !tokens[1].Token.Valid() {
		t.Fatalf("token reports = %v; want an exchange and a refresh, both successful", tokens)
	}
	if fmt.Sprint(values) != "[trace-1 trace-2]" {
		t.Errorf("context values seen by the Token hook = %v; want [trace-1 trace-2]", values)
	}
	noSecret(t, "TokenInfo", fmt.Sprintf("%v %+v", tokens, tokens))
}

// TestHookContextCancellation: the caller that started a flight may give
// up; the flight and the other waiters go on, and the Token hook still sees
// that caller's values.
func TestHookContextCancellation(t *testing.T) {
	ctx := context.Background()
	seen := make(chan any, 1)
	s, c := setup(t, WithHooks(Hooks{Token: func(ctx context.Context, ti TokenInfo) {
		select {
		case seen <- ctx.Value(ctxKey{}):
		default: // a second flight: the count below fails the test
		}
	}}))
	release := s.hold(t, pathToken)
	first, cancel := context.WithCancel(context.WithValue(ctx, ctxKey{}, "starter"))
	firstErr := make(chan error, 1)
	go func() { _, err := c.AccessToken(first); firstErr <- err }()
	for i := 0; s.Requests(pathToken) == 0; i++ {
		if i == 30000 {
			t.Fatal("no token request after 30s")
		}
		time.Sleep(time.Millisecond)
	}
	otherErr := make(chan error, 1)
	go func() { _, err := c.AccessToken(ctx); otherErr <- err }()
	cancel()
	if err := recv(t, firstErr, "the starter"); !errors.Is(err, context.Canceled) {
		t.Errorf("the starter's error = %v; want context.Canceled", err)
	}
	release()
	if err := recv(t, otherErr, "the other waiter"); err != nil {
		t.Errorf("the other waiter's error = %v; want nil", err)
	}
	if v := recv(t, seen, "the Token hook"); v != "starter" {
		t.Errorf("Token hook saw value %v; want the starter's", v)
	}
	if n := s.Requests(pathToken); n != 1 {
		t.Errorf("token requests = %d; want 1", n)
	}
}

// TestHookMayCallClient: a hook that calls the client does not deadlock:
// hooks run outside every lock.
func TestHookMayCallClient(t *testing.T) {
	ctx := context.Background()
	var c *Client
	var inHook atomic.Int32
	_, c = setup(t, WithHooks(Hooks{Attempt: func(ctx context.Context, a AttemptInfo) {
		if a.Path == "/api/feedback" {
			if _, err := c.AccessToken(ctx); err == nil {
				inHook.Add(1)
			}
			_ = c.Token()
		}
	}}))
	if _, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}); err != nil {
		t.Fatal(err)
	}
	if inHook.Load() != 1 {
		t.Errorf("AccessToken calls that succeeded in the hook = %d; want 1", inHook.Load())
	}
}

func TestLogging(t *testing.T) {
	ctx := context.Background()
	var logs logBuffer
	s, c := setup(t, WithLogger(newJSONLogger(&logs)))
	s.Fail("/api/feedback", 502, "bad gateway")
	fb := map[string]any{"message_id": "m1", "customer_responded": true, "score": "good"}
	if err := c.Do(ctx, "POST", "/api/feedback", fb, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RefreshAccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	type rec struct{ level, msg string }
	var got []rec
	for _, r := range logs.records(t) {
		got = append(got, rec{r["level"].(string), r["msg"].(string)})
		if r["msg"] == "apala: http attempt" {
			for _, k := range []string{"method", "path", "status", "duration", "attempt"} {
				if _, ok := r[k]; !ok {
					t.Errorf("attempt record lacks %q", k)
				}
			}
		}
		if r["msg"] == "apala: authenticated" && (r["company_name"] != fakeCompanyName || r["expires_in"] != float64(time.Hour)) {
			t.Errorf("authenticated record = %v; want company and expires_in", r)
		}
	}
	want := []rec{
		{"DEBUG", "apala: http attempt"}, {"INFO", "apala: authenticated"},
		{"DEBUG", "apala: http attempt"}, {"WARN", "apala: retrying"}, {"DEBUG", "apala: http attempt"},
		{"DEBUG", "apala: http attempt"}, {"INFO", "apala: token refreshed"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("records = %v; want %v", got, want)
	}
}

func TestSilentByDefault(t *testing.T) {
	ctx := context.Background()
	var logs logBuffer
	prev := slog.Default()
	slog.SetDefault(newJSONLogger(&logs))
	defer slog.SetDefault(prev)
	s, c := setup(t)
	s.Fail("/api/feedback", 503, "busy")
	_ = c.Do(ctx, "POST", "/api/feedback", map[string]any{"message_id": "m", "customer_responded": true, "score": "good"}, nil)
	if logs.String() != "" {
		t.Errorf("a client without WithLogger logged through slog.Default")
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

func TestClose(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	s, c := setup(t)
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == pathRefresh {
			close(started)
			<-r.Context().Done() // hangs until the client cancels
			return true
		}
		return false
	})
	clk.Advance(59*time.Minute + 30*time.Second) // stale: background refresh
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	recv(t, started, "the held refresh")
	if err := c.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if c.flight.Load() != nil {
		t.Errorf("Close() returned with a flight in progress")
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
	if _, err := c.AccessToken(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("AccessToken() after Close: %v; want ErrClosed", err)
	}
	if _, err := c.Authenticate(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Authenticate() after Close: %v; want ErrClosed", err)
	}
	if err := c.Do(ctx, "POST", "/api/feedback", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Do() after Close: %v; want ErrClosed", err)
	}
	if _, err := c.HTTPClient().Get(s.URL + "/api/x"); !errors.Is(err, ErrClosed) {
		t.Errorf("HTTPClient() after Close: %v; want ErrClosed", err)
	}
	if tok := c.Token(); tok.AccessToken != "" {
		t.Errorf("Token() after Close still holds a token")
	}
}

// ---- the round trip: retries, errors, scrubbing, hostile servers, HTTPClient ----

func TestDoInput(t *testing.T) {
	ctx := context.Background()
	_, c := setup(t)
	for _, p := range []string{"", "api", "//evil.example/x", "/a b", "/a\\b", "/a#b"} {
		var ve *ValidationError
		if err := c.Do(ctx, "GET", p, nil, nil); !errors.As(err, &ve) {
			t.Errorf("Do(path %q) error = %v; want *ValidationError", p, err)
		}
	}
	if err := c.Do(ctx, "POST", "/api/feedback", make(chan int), nil); err == nil || !strings.Contains(err.Error(), "encoding request") {
		t.Errorf("Do(unmarshalable) error = %v; want an encoding error", err)
	}
	//lint:ignore SA1012 a nil context must be an error, not a panic
	if err := c.Do(nil, "GET", "/x", nil, nil); err == nil { //nolint:staticcheck
		t.Errorf("Do(nil ctx) error = nil")
	}
}

// TestDoPathStaysUnderBase: a path with dot segments, escaped or not, is
// refused before anything is sent.
func TestDoPathStaysUnderBase(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	for _, p := range []string{"/api/../admin", "/api/./x", "/..", "/api/%2e%2e/admin", "/api/%2E%2e", "/api/.%2e/x", "/api/%2e", "/api/%2e%2e%2fadmin", "/api/x/..?q=1", "/api/%zz",
		"/api/%252e%252e/x", "/api/..;/x", "/api/..%3b/x", "/api/%2e%2e%3b/x", "/api/%c0%ae%c0%ae/x", "/api/..%5cx", "/api/x%00",
		"/..%3f", "/%2e%2e%3fx", "/..%23", "/api/..%253f/x", "/api/%2e%2e%23/x"} {
		err := c.Do(ctx, "GET", p, nil, nil)
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Field != "path" {
			t.Errorf("Do(%q) error = %v; want a *ValidationError for path", p, err)
		}
	}
	if n := s.totalRequests(); n != 0 {
		t.Errorf("requests = %d; want 0", n)
	}
	for _, p := range []string{"/api/feedback", "/api/a..b", "/api/.well-known", "/api/x?q=../y"} {
		if err := c.Do(ctx, "GET", p, nil, nil); err != nil && errors.As(err, new(*ValidationError)) {
			t.Errorf("Do(%q) error = %v; want the path accepted", p, err)
		}
	}
}

// TestDoNoContent: a 204 leaves out untouched and is no error.
func TestDoNoContent(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/api/empty" {
			return false
		}
		w.WriteHeader(http.StatusNoContent)
		return true
	})
	out := map[string]string{"kept": "yes"}
	if err := c.Do(ctx, "POST", "/api/empty", map[string]int{}, &out); err != nil {
		t.Fatalf("Do() on a 204 = %v; want nil", err)
	}
	if len(out) != 1 || out["kept"] != "yes" {
		t.Errorf("out = %v; want it untouched", out)
	}
}

func TestDo401ReplaysOnce(t *testing.T) {
	ctx := context.Background()
	for _, retries := range []int{0, 2} {
		t.Run(fmt.Sprint("retries=", retries), func(t *testing.T) {
			s, c := setup(t, WithMaxRetries(retries))
			if _, err := c.AccessToken(ctx); err != nil {
				t.Fatal(err)
			}
			old := c.pair.Load()
			s.revokeAccess()
			var out map[string]any
			fb := map[string]any{"message_id": "m1", "customer_responded": true, "score": "good"}
			if err := c.Do(ctx, "POST", "/api/feedback", fb, &out); err != nil {
				t.Fatalf("Do() after revocation: %v", err)
			}
			if s.Requests("/api/feedback") != 2 {
				t.Errorf("attempts = %d; want 2 (one replay)", s.Requests("/api/feedback"))
			}
			if c.pair.Load() == old || s.Requests(pathRefresh) != 1 || s.Requests(pathToken) != 1 {
				t.Errorf("token not renewed through a refresh")
			}

			// A second 401 on the replay is returned, not replayed again.
			s.script("/api/feedback", 401, `{"errors":{"detail":"Unauthorized"}}`, nil)
			s.script("/api/feedback", 401, `{"errors":{"detail":"Unauthorized"}}`, nil)
			before := s.Requests("/api/feedback")
			err := c.Do(ctx, "POST", "/api/feedback", fb, &out)
			var ae *APIError
			if !errors.Is(err, ErrUnauthorized) || !errors.As(err, &ae) || ae.Message != "Unauthorized" || ae.Path != "/api/feedback" || ae.Method != "POST" {
				t.Errorf("Do() error = %v; want *APIError 401 Unauthorized", err)
			}
			if got := s.Requests("/api/feedback") - before; got != 2 {
				t.Errorf("attempts = %d; want 2", got)
			}
		})
	}
}

func TestDoRetries(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		statuses []int
		retries  int
		attempts int
		is       error
	}{
		{"503 then ok", []int{503, 503}, 2, 3, nil},
		{"exhausted", []int{503, 502, 500}, 2, 3, ErrServer},
		{"504 408 429", []int{504, 408, 429}, 3, 4, nil},
		{"disabled", []int{503}, 0, 1, ErrServer},
		{"400 not retried", []int{400}, 2, 1, nil},
		{"403 not retried", []int{403}, 2, 1, ErrForbidden},
		{"404 not retried", []int{404}, 2, 1, nil},
		{"422 not retried", []int{422}, 2, 1, nil},
		{"501 not retried", []int{501}, 2, 1, ErrServer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := setup(t, WithMaxRetries(tt.retries))
			for _, st := range tt.statuses {
				s.Fail("/api/feedback", st, "scripted")
			}
			var keys []string
			var mu sync.Mutex
			s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path == "/api/feedback" {
					mu.Lock()
					keys = append(keys, r.Header.Get("Idempotency-Key"))
					mu.Unlock()
				}
				return false
			})
			fb := map[string]any{"message_id": "m1", "customer_responded": true, "score": "good"}
			err := c.Do(ctx, "POST", "/api/feedback", fb, nil)
			if got := s.Requests("/api/feedback"); got != tt.attempts {
				t.Errorf("attempts = %d; want %d", got, tt.attempts)
			}
			wantOK := tt.attempts > len(tt.statuses)
			if wantOK != (err == nil) {
				t.Fatalf("Do() error = %v; want success %v", err, wantOK)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
			}
			if len(keys) == 0 || len(keys[0]) != 32 {
				t.Fatalf("Idempotency-Key missing or not 32 hex characters")
			}
			for _, k := range keys {
				if k != keys[0] {
					t.Errorf("Idempotency-Key changed across retries: %v", keys)
				}
			}
		})
	}
}

// TestBackoff checks the delays between retries without sleeping: backoff(n)
// lies within the client's [min, max] for every retry n and bound pair, and
// within [base, base + base/2], where base is min doubled n-1 times and capped
// at max: the waits grow, and the jitter adds less than half the base. The
// oracle doubles in a loop where the code shifts, and the default bounds are
// checked against the literal numbers.
func TestBackoff(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		// The default bounds, as documented: 500ms and 8s.
		dc, err := NewClient("k")
		if err != nil {
			t.Fatal(err)
		}
		dc.Close()
		if dc.cfg.minBackoff != 500*time.Millisecond || dc.cfg.maxBackoff != 8*time.Second {
			t.Errorf("default backoff bounds = %v, %v; want 500ms, 8s", dc.cfg.minBackoff, dc.cfg.maxBackoff)
		}
		// The defaults spelt out: 500ms, 1s, 2s, 4s, then 8s for good.
		c := &config{minBackoff: 500 * time.Millisecond, maxBackoff: 8 * time.Second}
		for _, w := range []struct {
			n      int
			lo, hi time.Duration
		}{
			{1, 500 * time.Millisecond, 750 * time.Millisecond},
			{2, time.Second, 1500 * time.Millisecond},
			{3, 2 * time.Second, 3 * time.Second},
			{4, 4 * time.Second, 6 * time.Second},
			{5, 8 * time.Second, 8 * time.Second},
			{6, 8 * time.Second, 8 * time.Second},
			{40, 8 * time.Second, 8 * time.Second},
		} {
			seen := map[time.Duration]bool{}
			for rep := 0; rep < 200; rep++ {
				d := c.backoff(w.n)
				if d < w.lo || d > w.hi {
					t.Fatalf("default bounds: backoff(%d) = %v; want within [%v, %v]", w.n, d, w.lo, w.hi)
				}
				seen[d] = true
			}
			if w.lo < w.hi && len(seen) < 2 {
				t.Errorf("default bounds: backoff(%d) gave %d distinct delays in 200 calls; want jitter", w.n, len(seen))
			}
		}
	})

	const huge = 1 << 62 // about 146 years
	for _, b := range []struct{ min, max time.Duration }{
		{min: time.Second, max: time.Second},
		{min: 500 * time.Millisecond, max: 8 * time.Second},
		{min: time.Millisecond, max: 5 * time.Millisecond},
		{min: time.Nanosecond, max: time.Nanosecond},
		{min: time.Nanosecond, max: 3 * time.Nanosecond},
		{min: 3 * time.Millisecond, max: 1000 * time.Millisecond},
		{min: time.Minute, max: time.Hour},
		{min: time.Second, max: huge},
		{min: huge, max: huge},
		{min: 100 * 365 * 24 * time.Hour, max: 100 * 365 * 24 * time.Hour}, // min<<(n-1) once wrapped around below min
		{min: 1<<63 - 1, max: 1<<63 - 1},                                   // the jitter once overflowed past max
	} {
		b := b
		t.Run(fmt.Sprintf("%v-%v", b.min, b.max), func(t *testing.T) {
			c := &config{minBackoff: b.min, maxBackoff: b.max}
			for n := 1; n <= 40; n++ {
				base := b.min
				for i := 1; i < n && base < b.max; i++ {
					if base > b.max/2 {
						base = b.max
					} else {
						base *= 2
					}
				}
				hi := base + base/2
				if hi > b.max || hi < base {
					hi = b.max
				}
				for rep := 0; rep < 100; rep++ {
					d := c.backoff(n)
					if d < b.min || d > b.max {
						t.Fatalf("backoff(%d) = %v; want within the bounds", n, d)
					}
					if d < base || d > hi {
						t.Fatalf("backoff(%d) = %v; want within [%v, %v] (min doubled %d times, capped, plus under half of it)", n, d, base, hi, n-1)
					}
				}
			}
		})
	}
}

func TestIdempotencyKeyPerCall(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	fb := map[string]any{"message_id": "m1", "customer_responded": true, "score": "good"}
	if err := c.Do(ctx, "POST", "/api/feedback", fb, nil); err != nil {
		t.Fatal(err)
	}
	k1 := s.lastHeader("/api/feedback").Get("Idempotency-Key")
	if err := c.Do(ctx, "POST", "/api/feedback", fb, nil); err != nil {
		t.Fatal(err)
	}
	if k2 := s.lastHeader("/api/feedback").Get("Idempotency-Key"); k1 == k2 || k1 == "" {
		t.Errorf("Idempotency-Key %q then %q; want two distinct keys", k1, k2)
	}
	if s.lastHeader(pathToken).Get("Idempotency-Key") != "" {
		t.Errorf("the token request carries an Idempotency-Key")
	}
}

// TestParseRetryAfter pins the cap at the literal 60s the package promises,
// not at the constant that implements it, so that a change of the constant
// fails here.
func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 15, 10, 0, 0, 0, time.UTC)
	const capped = 60 * time.Second
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"3", 3 * time.Second},
		{" 7 ", 7 * time.Second},
		{"0", 0},
		{"-4", 0},
		{"59", 59 * time.Second},
		{"60", capped},
		{"61", capped},
		{"120", capped},
		{"600", capped},
		{"99999999999999999999", 0},
		{now.Add(20 * time.Second).Format(http.TimeFormat), 20 * time.Second},
		{now.Add(59 * time.Second).Format(http.TimeFormat), 59 * time.Second},
		{now.Add(2 * time.Minute).Format(http.TimeFormat), capped},
		{now.Add(5 * time.Minute).Format(http.TimeFormat), capped},
		{now.Add(time.Hour).Format(http.TimeFormat), capped},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{"soon", 0},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %v; want %v", tt.in, got, tt.want)
		}
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	ctx := context.Background()
	var logs logBuffer
	s, c := setup(t, WithLogger(newJSONLogger(&logs)))
	s.script("/api/feedback", 429, `{"error":"slow down"}`, map[string]string{"Retry-After": "1"})
	fb := map[string]any{"message_id": "m1", "customer_responded": true, "score": "good"}
	if err := c.Do(ctx, "POST", "/api/feedback", fb, nil); err != nil {
		t.Fatalf("Do() error = %v", err)
	}
	var delays []any
	for _, r := range logs.records(t) {
		if r["msg"] == "apala: retrying" {
			delays = append(delays, r["delay"])
			if r["reason"] != "429 Too Many Requests" {
				t.Errorf("retry reason = %v; want 429 Too Many Requests", r["reason"])
			}
		}
	}
	if len(delays) != 1 || delays[0] != float64(time.Second) {
		t.Errorf("retry delays = %v; want [1s] from Retry-After", delays)
	}
}

// TestRetryAfterPastDeadline: a Retry-After that ends after the caller's
// deadline returns the answer at once instead of sleeping into the deadline.
// Sleeping would end in the deadline's error, so the error's kind tells which
// happened, with no clock read: a 60s wait, a 59s deadline.
func TestRetryAfterPastDeadline(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	access, refresh := s.grant()
	holdToken(c, access, refresh, 3600, 0)
	s.script("/api/feedback", 503, `{"error":"maintenance"}`, map[string]string{"Retry-After": "60"})
	dctx, cancel := context.WithTimeout(ctx, 59*time.Second)
	defer cancel()
	fb := map[string]any{"message_id": "m1", "customer_responded": true, "score": "good"}
	err := c.Do(dctx, "POST", "/api/feedback", fb, nil)
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 503 || ae.RetryAfter != 60*time.Second || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do() error = %v; want the 503 with RetryAfter 60s, returned before the deadline", err)
	}
	if s.Requests("/api/feedback") != 1 {
		t.Errorf("attempts = %d; want 1", s.Requests("/api/feedback"))
	}
}

func TestConnectionRefused(t *testing.T) {
	ctx := context.Background()
	c := newTestClient(t, WithBaseURL("http://"+deadAddr(t)), WithMaxRetries(1))
	_, err := c.AccessToken(ctx)
	var ue *url.Error
	if !errors.Is(err, ErrConnection) || !errors.As(err, &ue) {
		t.Fatalf("AccessToken() error = %v; want ErrConnection wrapping *url.Error", err)
	}
	if !strings.HasPrefix(err.Error(), "apala: ") {
		t.Errorf("error %q lacks the apala: prefix", err)
	}
	noSecret(t, "error", err.Error())
}

// TestPerAttemptTimeout: each attempt ends at the per-attempt timeout and is
// retried. Attempts are counted where the client makes them, not at the
// server, which a busy machine may not let a request reach within 50ms.
func TestPerAttemptTimeout(t *testing.T) {
	ctx := context.Background()
	s := startServer(t)
	ct := &countingTransport{base: http.DefaultTransport.(*http.Transport).Clone(), attempts: map[string]int{}}
	defer ct.base.(*http.Transport).CloseIdleConnections()
	c := newTestClient(t, WithBaseURL(s.URL), WithHTTPClient(&http.Client{Transport: ct}), WithTimeout(50*time.Millisecond), WithMaxRetries(1))
	access, refresh := s.grant()
	holdToken(c, access, refresh, 3600, 0) // no token request, which the short timeout could fail
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		<-r.Context().Done() // hang until the client gives up
		return true
	})
	err := c.Do(ctx, "POST", "/api/feedback", map[string]any{}, nil)
	if !errors.Is(err, ErrConnection) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do() error = %v; want ErrConnection and DeadlineExceeded", err)
	}
	if got := ct.count("/api/feedback"); got != 2 {
		t.Errorf("attempts = %d; want 2", got)
	}
}

func TestCallerContext(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		<-r.Context().Done()
		return true
	})
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		for s.Requests("/api/feedback") == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	if err := c.Do(cctx, "POST", "/api/feedback", map[string]any{}, nil); !errors.Is(err, context.Canceled) || errors.Is(err, ErrConnection) {
		t.Errorf("Do() error = %v; want context.Canceled, not ErrConnection", err)
	}
	dctx, cancel2 := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel2()
	if err := c.Do(dctx, "POST", "/api/feedback", map[string]any{}, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Do() error = %v; want context.DeadlineExceeded", err)
	}
}

// TestCertificateErrorNotRetried: a certificate that fails verification is
// returned at once: no retry can fix it.
func TestCertificateErrorNotRetried(t *testing.T) {
	ctx := context.Background()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	conns := countConnections(srv)
	srv.StartTLS()
	defer srv.Close()
	c := newTestClient(t, WithBaseURL(srv.URL), WithMaxRetries(2), WithRetryBackoff(time.Millisecond, time.Millisecond))
	_, err := c.AccessToken(ctx)
	var cve *tls.CertificateVerificationError
	if !errors.Is(err, ErrConnection) || !errors.As(err, &cve) {
		t.Fatalf("error = %v; want ErrConnection with the certificate error", err)
	}
	if got := conns.Load(); got != 1 {
		t.Errorf("connections = %d; want 1 (no retry)", got)
	}
}

func TestRedirectsNotFollowed(t *testing.T) {
	ctx := context.Background()
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		writeJSON(w, 200, map[string]string{"access_token": "stolen"})
	}))
	defer other.Close()
	userClient := &http.Client{} // follows redirects by default
	for _, tc := range []struct {
		name string
		opts []ClientOption
	}{{"own client", nil}, {"caller's client", []ClientOption{WithHTTPClient(userClient)}}} {
		for _, code := range []int{307, 308} {
			t.Run(fmt.Sprint(tc.name, code), func(t *testing.T) {
				s, c := setup(t, tc.opts...)
				s.script(pathToken, code, "", map[string]string{"Location": other.URL + pathToken})
				_, err := c.AccessToken(ctx)
				var ae *APIError
				if !errors.As(err, &ae) || ae.StatusCode != code || !strings.Contains(err.Error(), "redirect not followed") {
					t.Errorf("AccessToken() error = %v; want *APIError %d", err, code)
				}
				if elsewhere.Load() != 0 {
					t.Errorf("the API key was sent to the redirect target")
				}
			})
		}
	}
	if userClient.CheckRedirect != nil {
		t.Errorf("the caller's *http.Client was modified")
	}
}

func TestBoundedReading(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 20<<20)
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"a":"`+big+`"}`)
		return true
	})
	var out map[string]any
	if err := c.Do(ctx, "POST", "/api/feedback", map[string]any{}, &out); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("Do() with a 20 MiB body: error = %v; want a size error", err)
	}
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(500)
		_, _ = io.WriteString(w, "<html>"+strings.Repeat("<p>oops</p>", 20000)+"</html>")
		return true
	})
	err := c.Do(ctx, "POST", "/api/feedback", map[string]any{}, &out)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Message != "" || !strings.Contains(err.Error(), "(text/html response)") || strings.Contains(err.Error(), "oops") {
		t.Errorf("Do() with an HTML error page: error = %v; want status and content type only", err)
	}
}

// meteredBody is a response body of size bytes made on the fly (a JSON
// opening, then x's), counting the bytes the client reads from it.
type meteredBody struct {
	size, off int64
	read      *atomic.Int64
}

func (b *meteredBody) Read(p []byte) (int, error) {
	if b.off >= b.size {
		return 0, io.EOF
	}
	if left := b.size - b.off; int64(len(p)) > left {
		p = p[:left]
	}
	for i := range p {
		if b.off+int64(i) < 6 {
			p[i] = `{"a":"`[b.off+int64(i)]
		} else {
			p[i] = 'x'
		}
	}
	b.off += int64(len(p))
	b.read.Add(int64(len(p)))
	return len(p), nil
}

func (b *meteredBody) Close() error { return nil }

// meteredTransport answers every request in memory with status and a
// meteredBody of size bytes, declared in Content-Length or not.
type meteredTransport struct {
	status   int
	size     int64
	declared bool
	read     atomic.Int64
}

func (t *meteredTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		r.Body.Close()
	}
	cl := int64(-1)
	if t.declared {
		cl = t.size
	}
	return &http.Response{
		StatusCode: t.status, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"text/html"}},
		Body:          &meteredBody{size: t.size, read: &t.read},
		ContentLength: cl, Request: r,
	}, nil
}

// TestBoundedReadingBytes counts the bytes read from a response body, not
// the words of the error: a success body is read up to 10 MiB and one byte
// more (to see that it is larger), whether its length is declared or not; an
// error body up to 64 KiB and one byte for its message, then drained up to
// 1 MiB more so the connection can be reused. The numbers are the literal
// promises, not the constants that implement them.
func TestBoundedReadingBytes(t *testing.T) {
	ctx := context.Background()
	const (
		successCap = 10 << 20           // read at most successCap+1
		errorCap   = 64<<10 + 1 + 1<<20 // message and drain
	)
	tests := []struct {
		name     string
		status   int
		size     int64
		declared bool
		ok       bool  // the call succeeds
		maxRead  int64 // bytes read at most
		wantRead int64 // bytes read exactly, when not -1
	}{
		{"success, 20 MiB declared", 200, 20 << 20, true, false, successCap + 1, -1},
		{"success, 20 MiB undeclared", 200, 20 << 20, false, false, successCap + 1, -1},
		{"success, 10 MiB + 1 undeclared", 200, successCap + 1, false, false, successCap + 1, -1},
		{"success, 10 MiB + 1 declared", 200, successCap + 1, true, false, successCap + 1, -1},
		{"success, exactly 10 MiB", 200, successCap, false, true, successCap, successCap},
		{"error, 20 MiB declared", 500, 20 << 20, true, false, errorCap, -1},
		{"error, 20 MiB undeclared", 500, 20 << 20, false, false, errorCap, -1},
		{"error, 200 KiB: drained whole", 500, 200 << 10, false, false, errorCap, 200 << 10},
		{"error, message and drain exactly", 500, errorCap, false, false, errorCap, errorCap},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mt := &meteredTransport{status: tt.status, size: tt.size, declared: tt.declared}
			c := newTestClient(t, WithHTTPClient(&http.Client{Transport: mt}), WithMaxRetries(0))
			holdToken(c, "a.b.c", "r", 3600, 0)
			err := c.Do(ctx, "POST", "/api/feedback", map[string]any{}, nil)
			switch got := mt.read.Load(); {
			case got > tt.maxRead:
				t.Errorf("bytes read of a %d-byte body = %d; want at most %d", tt.size, got, tt.maxRead)
			case tt.wantRead >= 0 && got != tt.wantRead:
				t.Errorf("bytes read of a %d-byte body = %d; want %d (read whole, so the connection can be reused)", tt.size, got, tt.wantRead)
			}
			if tt.ok != (err == nil) {
				t.Fatalf("Do() error = %v; want success %v", err, tt.ok)
			}
			var ae *APIError
			if tt.status >= 400 && (!errors.As(err, &ae) || ae.StatusCode != tt.status) {
				t.Errorf("Do() error = %v; want *APIError %d", err, tt.status)
			}
		})
	}
}

func TestConnectionsReused(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t, WithMaxRetries(0))
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		s.Fail("/api/feedback", 500, strings.Repeat("x", 100<<10))
		_ = c.Do(ctx, "POST", "/api/feedback", map[string]any{}, nil)
		s.script("/api/feedback", 404, `<html>`+strings.Repeat("x", 200<<10)+`</html>`, nil)
		_ = c.Do(ctx, "POST", "/api/feedback", map[string]any{}, nil)
	}
	if got := s.conns.Load(); got != 1 {
		t.Errorf("connections opened = %d; want 1 (error bodies drained)", got)
	}
}

func TestAPIErrorMessage(t *testing.T) {
	tests := []struct {
		body, want string
	}{
		{`{"error":"bad key"}`, "bad key"},
		{`{"message":"nope"}`, "nope"},
		{`{"detail":"missing field"}`, "missing field"},
		{`{"errors":{"detail":"Not Found"}}`, "Not Found"},
		{`{"errors":{"customer_id":["is invalid"]}}`, `{"customer_id":["is invalid"]}`},
		{`{"error":{"code":7}}`, `{"code":7}`},
		{`{"error":"line\nbreak"}`, "line break"},
		{`{"error":"echo ` + FakeAPIKey + `"}`, "echo [REDACTED]"},
		{`<html>Bad</html>`, ""},
		{`plain text`, ""},
		{`[1,2]`, ""},
		{``, ""},
	}
	_, c := setup(t)
	for _, tt := range tests {
		rq := newRequest("POST", "/p", false)
		e := c.apiError(&rq, response{status: 400, header: http.Header{}, body: bytes.NewBufferString(tt.body)})
		if e.Message != tt.want {
			t.Errorf("message of %.30q = %q; want %q", tt.body, e.Message, tt.want)
		}
	}
}

// TestRequestID: the answer's X-Request-Id reaches APIError (and its text),
// the Debug log and ResponseInfo, scrubbed like any server text.
func TestRequestID(t *testing.T) {
	ctx := context.Background()
	var logs logBuffer
	s, c := setup(t, WithLogger(newJSONLogger(&logs)))
	s.script("/api/feedback", 403, `{"error":"no"}`, map[string]string{"X-Request-Id": "F0x-req-1"})
	var info ResponseInfo
	_, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}, WithResponseInfo(&info))
	var ae *APIError
	if !errors.As(err, &ae) || ae.RequestID != "F0x-req-1" || !strings.HasSuffix(err.Error(), "(request id F0x-req-1)") {
		t.Fatalf("error = %v; want an *APIError with request id F0x-req-1", err)
	}
	if info.RequestID != "F0x-req-1" || info.StatusCode != 403 {
		t.Errorf("ResponseInfo = %+v; want status 403, request id F0x-req-1", info)
	}
	var found bool
	for _, r := range logs.records(t) {
		found = found || (r["msg"] == "apala: http attempt" && r["request_id"] == "F0x-req-1")
	}
	if !found {
		t.Errorf("no Debug attempt record carries request_id")
	}
	s.script("/api/feedback", 500, `{}`, map[string]string{"X-Request-Id": "id-" + FakeAPIKey})
	_, err = c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}, WithMaxRetries(0))
	if !errors.As(err, &ae) || ae.RequestID != "id-[REDACTED]" {
		t.Errorf("request id carrying the key = %q; want it scrubbed", ae.RequestID)
	}
	noSecret(t, "error", err.Error())
}

func TestSecretsNeverPrinted(t *testing.T) {
	ctx := context.Background()
	var logs logBuffer
	s, c := setup(t, WithLogger(newJSONLogger(&logs)), WithMaxRetries(2))
	ar, err := c.Authenticate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	refresh := c.pair.Load().refresh
	rr, err := c.RefreshAccessToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A scenario with retries, a 401 replay and a refused refresh.
	s.Fail("/api/feedback", 503, "busy")
	s.RevokeTokens()
	s.Fail(pathRefresh, 401, "bad refresh "+refresh)
	fb := map[string]any{"message_id": "m1", "customer_responded": true, "score": "good"}
	if err := c.Do(ctx, "POST", "/api/feedback", fb, nil); err != nil {
		t.Fatal(err)
	}
	s.Fail("/api/feedback", 400, "your token "+c.Token().AccessToken+" and key "+FakeAPIKey)
	errEcho := c.Do(ctx, "POST", "/api/feedback", fb, nil)
	if errEcho == nil {
		t.Fatal("want an error")
	}
	c.logAttrs(ctx, slog.LevelInfo, "values", slog.Any("client", c), slog.Any("token", c.Token()),
		slog.Any("auth", ar), slog.Any("refresh", rr), slog.Any("err", errEcho))

	values := []any{c, c.Token(), ar, &ar, rr, &rr, errEcho}
	for _, v := range values {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T %v"} {
			noSecret(t, fmt.Sprintf("%s of %T", verb, v), fmt.Sprintf(verb, v))
		}
		noSecret(t, fmt.Sprintf("Sprint of %T", v), fmt.Sprint(v))
	}
	noSecret(t, "log output", logs.String())
	if !strings.Contains(logs.String(), `"level":"DEBUG"`) || !strings.Contains(logs.String(), "apala: retrying") {
		t.Errorf("the scenario did not log attempts and retries")
	}
	// The values still say what they are.
	if got := fmt.Sprint(c.Token()); !strings.Contains(got, "[REDACTED]") || !strings.Contains(got, fakeCompanyName) {
		t.Errorf("Token printed as %q; want a redacted description with the company", got)
	}
}

// TestServerTextCut: the server's text is cut at 512 bytes after the
// scrubbing, never inside a UTF-8 character.
func TestServerTextCut(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t, WithMaxRetries(0))
	c.pair.Store(nil)
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	for pad := 500; pad < 512; pad++ {
		s.Fail("/api/feedback", 400, strings.Repeat("x", pad)+FakeAPIKey)
		err := c.Do(ctx, "POST", "/api/feedback", map[string]int{}, nil)
		if err == nil {
			t.Fatal("want an error")
		}
		noSecret(t, fmt.Sprintf("error with %d bytes before the key", pad), err.Error())
		if run := secretRun(err.Error(), FakeAPIKey); run != "" {
			t.Fatalf("error with %d bytes before the key holds a part of it", pad)
		}
	}
	for pad := 0; pad < 4; pad++ {
		s.Fail("/api/feedback", 400, strings.Repeat("x", pad)+strings.Repeat("é€😀", 200))
		err := c.Do(ctx, "POST", "/api/feedback", map[string]int{}, nil)
		var ae *APIError
		if !errors.As(err, &ae) || !utf8.ValidString(ae.Message) || !strings.HasSuffix(ae.Message, "...") || len(ae.Message) > 512+3 {
			t.Errorf("pad %d: message of %d bytes, valid UTF-8 %v; want at most 515 bytes of valid UTF-8 ending in ...", pad, len(ae.Message), utf8.ValidString(ae.Message))
		}
	}
}

// TestScrubsTokenTheCallWasSentWith: a server that echoes the bearer it got
// after the client replaced that token (an Authenticate or a refresh during
// the call) still has it scrubbed from the error.
func TestScrubsTokenTheCallWasSentWith(t *testing.T) {
	ctx := context.Background()
	for _, renew := range []string{"Authenticate", "RefreshAccessToken"} {
		t.Run(renew, func(t *testing.T) {
			s, c := setup(t)
			if _, err := c.Authenticate(ctx); err != nil {
				t.Fatal(err)
			}
			old := c.Token().AccessToken
			s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path != "/api/feedback" {
					return false
				}
				var err error
				if renew == "Authenticate" {
					_, err = c.Authenticate(context.Background())
				} else {
					_, err = c.RefreshAccessToken(context.Background())
				}
				if err != nil {
					t.Errorf("%s() inside the call: %v", renew, err)
				}
				bearer := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
				writeJSON(w, 403, map[string]string{"error": "token " + bearer + " lacks the feedback scope"})
				return true
			})
			_, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood})
			if !errors.Is(err, ErrForbidden) {
				t.Fatalf("SubmitFeedback() error = %v; want ErrForbidden", err)
			}
			if c.Token().AccessToken == old {
				t.Fatalf("the token was not replaced during the call")
			}
			noSecret(t, "error", err.Error())
			if !strings.Contains(err.Error(), "token [REDACTED] lacks the feedback scope") {
				t.Errorf("error does not carry the server's text with the token redacted (withheld)")
			}
		})
	}
}

// TestNoSecretRunInServerText is a property test: the server puts each
// secret the client holds into its error text in every form it can take
// (plain, JSON-escaped, \u-escaped, nested in objects and arrays, as a key,
// in a header, cut or straddling the 512-byte cut), and no run of 8 bytes of
// any secret reaches an error string, fmt output or a log record.
func TestNoSecretRunInServerText(t *testing.T) {
	ctx := context.Background()
	const key = `k/ey"<&>\SECRET-0123456789abcdef/xyz-é`
	type answer struct {
		status int
		header map[string]string
		body   string
	}
	noHTML := func(v any) string {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(v)
		return strings.TrimSpace(b.String())
	}
	mustJSON := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	forms := map[string]func(s string) answer{
		"plain":          func(s string) answer { return answer{body: mustJSON(map[string]string{"error": "bad " + s + " here"})} },
		"no HTML escape": func(s string) answer { return answer{body: noHTML(map[string]string{"error": s})} },
		"slash escaped": func(s string) answer {
			return answer{body: `{"error":"x ` + strings.ReplaceAll(strings.Trim(noHTML(s), `"`), "/", `\/`) + ` y"}`}
		},
		"u escaped": func(s string) answer {
			var b strings.Builder
			for _, r := range s {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
			return answer{body: `{"message":"` + b.String() + `"}`}
		},
		"detail": func(s string) answer { return answer{body: mustJSON(map[string]string{"detail": s})} },
		"phoenix": func(s string) answer {
			return answer{body: mustJSON(map[string]any{"errors": map[string]string{"detail": s}})}
		},
		"errors object": func(s string) answer {
			return answer{body: mustJSON(map[string]any{"errors": map[string][]string{"field": {s}}})}
		},
		"nested": func(s string) answer {
			return answer{body: mustJSON(map[string]any{"error": map[string]any{"a": map[string]any{"b": []any{1, s, true}}}})}
		},
		"as a key": func(s string) answer {
			return answer{body: mustJSON(map[string]any{"error": map[string]string{s: "x"}})}
		},
		"array": func(s string) answer { return answer{body: mustJSON(map[string]any{"error": []string{s, s}})} },
		"twice": func(s string) answer { return answer{body: mustJSON(map[string]string{"error": s + s})} },
		"half":  func(s string) answer { return answer{body: mustJSON(map[string]string{"error": "x" + s[:len(s)/2]})} },
		"line breaks": func(s string) answer {
			return answer{body: mustJSON(map[string]string{"error": s[:10] + "\n" + s[10:]})}
		},
		"url escaped": func(s string) answer { return answer{body: mustJSON(map[string]string{"error": url.QueryEscape(s)})} },
		"content type": func(s string) answer {
			return answer{header: map[string]string{"Content-Type": "text/" + s}, body: "<html>" + s + "</html>"}
		},
		"200 content type": func(s string) answer {
			return answer{status: 200, header: map[string]string{"Content-Type": "application/" + s}, body: "not JSON " + s}
		},
	}
	for cut := 1; cut < 48; cut++ {
		cut := cut
		forms[fmt.Sprintf("straddling the cut by %d", cut)] = func(s string) answer {
			return answer{body: mustJSON(map[string]string{"error": strings.Repeat("x", 512-cut) + s})}
		}
		forms[fmt.Sprintf("straddling the cut by %d after UTF-8", cut)] = func(s string) answer {
			return answer{body: mustJSON(map[string]string{"error": strings.Repeat("é", 256-cut) + "x" + s})}
		}
	}

	var (
		mu       sync.Mutex
		serial   int
		issued   = []string{key}
		current  string // path answering with the case
		which    string // the secret it echoes: key, access or refresh
		form     func(string) answer
		refresh  string
		sentWith string
	)
	issue := func(kind string) string {
		serial++
		tok := fmt.Sprintf(`%s/%d"<&>\SECRET-%016x-tail`, kind, serial, mrand.Uint64())
		issued = append(issued, tok)
		return tok
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Path == current {
			secret := map[string]string{"key": key, "access": strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "), "refresh": refresh}[which]
			sentWith = secret
			a := form(secret)
			for k, v := range a.header {
				w.Header().Set(k, v)
			}
			if a.status == 0 {
				a.status = 400
				if which == "refresh" {
					a.status = 503
				}
			}
			w.WriteHeader(a.status)
			_, _ = io.WriteString(w, a.body)
			return
		}
		switch r.URL.Path {
		case pathToken:
			refresh = issue("ref")
			writeJSON(w, 200, map[string]any{"access_token": issue("acc"), "refresh_token": refresh, "expires_in": 3600})
		case pathRefresh:
			writeJSON(w, 200, map[string]any{"access_token": issue("acc"), "expires_in": 3600})
		default:
			writeJSON(w, 200, map[string]any{})
		}
	}))
	defer srv.Close()

	var logs logBuffer
	c, err := NewClient(key, WithBaseURL(srv.URL), WithMaxRetries(0), WithLogger(newJSONLogger(&logs)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Authenticate(ctx); err != nil {
		t.Fatal(err)
	}
	calls := map[string]struct {
		path string
		call func() error
	}{
		"key":     {pathToken, func() error { _, err := c.Authenticate(ctx); return err }},
		"access":  {"/api/echo", func() error { return c.Do(ctx, "POST", "/api/echo", map[string]int{}, &struct{}{}) }},
		"refresh": {pathRefresh, func() error { _, err := c.RefreshAccessToken(ctx); return err }},
	}
	n := 0
	for name, f := range forms {
		for w, call := range calls {
			mu.Lock()
			current, which, form, sentWith = call.path, w, f, ""
			mu.Unlock()
			err := call.call()
			mu.Lock()
			echoed := sentWith
			secrets := append([]string(nil), issued...)
			mu.Unlock()
			if err == nil || echoed == "" {
				t.Fatalf("%s in %s: no error (%v), or the server did not answer the case", w, name, err == nil)
			}
			n++
			for _, out := range []string{err.Error(), fmt.Sprintf("%v|%+v|%#v|%s|%q", err, err, err, err, err)} {
				if secretRun(out, secrets...) != "" {
					t.Errorf("%s in %s: a run of 8 bytes of a secret reached the error (withheld)", w, name)
				}
			}
		}
	}
	mu.Lock()
	secrets := append([]string(nil), issued...)
	mu.Unlock()
	if secretRun(logs.String(), secrets...) != "" {
		t.Errorf("a run of 8 bytes of a secret reached the log (withheld)")
	}
	if n < 200 {
		t.Errorf("cases = %d; want hundreds", n)
	}
}

func TestHTTPClient(t *testing.T) {
	s, c := setup(t)
	var otherAuth atomic.Value
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		otherAuth.Store(r.Header.Get("Authorization"))
	}))
	defer other.Close()
	hc := c.HTTPClient()

	body := `{"message_id":"m1","customer_responded":true,"score":"good"}`
	req, status := httpClientPost(t, hc, s.URL, strings.NewReader(body), "k1")
	if status != 200 {
		t.Fatalf("status = %d; want 200", status)
	}
	if req.Header.Get("Authorization") != "" {
		t.Errorf("HTTPClient modified the caller's request")
	}

	// 401: a new token and one replay with the body.
	s.RevokeTokens()
	before := s.Requests("/api/feedback")
	_, status = httpClientPost(t, hc, s.URL, strings.NewReader(body), "k2")
	if status != 200 || s.Requests("/api/feedback")-before != 2 {
		t.Errorf("after revocation: status %d, attempts %d; want 200, 2", status, s.Requests("/api/feedback")-before)
	}

	// Another origin gets no token.
	resp, err := hc.Get(other.URL + "/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if otherAuth.Load() != "" {
		t.Errorf("HTTPClient sent the token to another origin")
	}
}

// unreplayable is a request body without GetBody: http.NewRequest cannot
// tell how to read it again.
type unreplayable struct{ io.Reader }

// TestHTTPClientRefusedTokenDropped: a 401 on a request that cannot be
// replayed is returned, and the refused token is dropped all the same, so
// the next request gets a new one.
func TestHTTPClientRefusedTokenDropped(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	hc := c.HTTPClient()
	if _, err := c.AccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	old := c.Token().AccessToken
	s.RevokeTokens()
	body := unreplayable{strings.NewReader(`{"message_id":"m1","customer_responded":true,"score":"good"}`)}
	if _, status := httpClientPost(t, hc, s.URL, body, "k1"); status != 401 {
		t.Fatalf("status = %d; want the 401", status)
	}
	if c.Token().Valid() {
		t.Errorf("the refused token is still held")
	}
	tok, err := c.AccessToken(ctx)
	if err != nil || tok == old {
		t.Errorf("AccessToken() after the 401: error %v, or the refused token again", err)
	}
}

// TestHTTPClientAfterClose: after Close every request fails with ErrClosed,
// to any origin, and nothing is sent.
func TestHTTPClientAfterClose(t *testing.T) {
	s, c := setup(t)
	var hits atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer other.Close()
	hc := c.HTTPClient()
	c.Close()
	for _, u := range []string{s.URL + "/api/feedback", other.URL + "/x"} {
		if resp, err := hc.Get(u); !errors.Is(err, ErrClosed) {
			if resp != nil {
				resp.Body.Close()
			}
			t.Errorf("Get(%s) after Close: error = %v; want ErrClosed", u, err)
		}
	}
	if n := s.totalRequests() + int(hits.Load()); n != 0 {
		t.Errorf("requests after Close = %d; want 0", n)
	}
}

// ---- the message and feedback calls ----

func TestProcessMessage(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	got, err := c.ProcessMessage(ctx, conversation())
	if err != nil {
		t.Fatalf("ProcessMessage: %v", err)
	}
	sameJSON(t, "ProcessMessage", s.lastBody("/api/message_processing"), `{
		"company": "`+FakeCompanyGUID+`",
		"customer_id": "`+customerID+`",
		"zip_code": "90210",
		"messages": `+conversationWire+`,
		"candidate_message": {"content": "Please upload your bank statement.", "channel": "OTHER", "message_id": "m-3", "send_timestamp": "2025-01-15T10:30:00+00:00", "reply_or_not": "false"}
	}`)
	want := &ProcessingResponse{Company: FakeCompanyGUID, CustomerID: customerID,
		CandidateMessage: CandidateMessage{Content: "Please upload your bank statement.", Channel: ChannelOther, MessageID: "m-3"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ProcessMessage() = %+v; want %+v", got, want)
	}
	if h := s.lastHeader("/api/message_processing"); h.Get("Content-Type") != "application/json" || len(h.Get("Idempotency-Key")) != 32 {
		t.Errorf("ProcessMessage headers: Content-Type %q, Idempotency-Key of %d characters", h.Get("Content-Type"), len(h.Get("Idempotency-Key")))
	}
}

func TestWireTime(t *testing.T) {
	ist := time.FixedZone("IST", 5*3600+1800)
	tests := []struct {
		in   time.Time
		want string
	}{
		{t0, "2025-01-15T10:30:00+00:00"},
		{t1, "2025-01-15T11:45:30.250000-05:00"},
		{time.Date(2025, 1, 15, 10, 30, 0, 120000000, time.UTC), "2025-01-15T10:30:00.120000+00:00"},
		{time.Date(2025, 1, 15, 10, 30, 0, 123456789, time.UTC), "2025-01-15T10:30:00.123456+00:00"},
		{time.Date(2025, 1, 15, 10, 30, 0, 999, ist), "2025-01-15T10:30:00+05:30"},
		{time.Date(1999, 12, 31, 23, 59, 59, 1000, time.UTC), "1999-12-31T23:59:59.000001+00:00"},
	}
	for _, tt := range tests {
		if got := wireTime(tt.in); got != tt.want {
			t.Errorf("wireTime(%v) = %q; want %q", tt.in, got, tt.want)
		}
	}
	// Python's isoformat, on any time and zone.
	rnd := mrand.New(mrand.NewSource(7))
	for i := 0; i < 10000; i++ {
		zone := time.FixedZone("", (rnd.Intn(28*60)-14*60)*60)
		tm := time.Unix(rnd.Int63n(4e9), rnd.Int63n(1e9)).In(zone)
		if i%3 == 0 {
			tm = tm.UTC()
		}
		// Python's isoformat: six fraction digits unless all are zero.
		want := tm.Format("2006-01-02T15:04:05")
		if us := tm.Nanosecond() / 1000; us != 0 {
			want += fmt.Sprintf(".%06d", us)
		}
		want += tm.Format("-07:00")
		if got := wireTime(tm); got != want {
			t.Fatalf("wireTime(%v) = %q; want %q", tm, got, want)
		}
	}
}

// TestMessageDefaults checks what is filled in: a message id of 32 lowercase
// hex characters from crypto/rand, the current UTC time, the client's
// company GUID, and no zip_code when none is given.
func TestMessageDefaults(t *testing.T) {
	ctx := context.Background()
	clk := useFakeClock(t)
	clk.Advance(123456 * time.Microsecond)
	s, c := setup(t)
	req := MessageRequest{Candidate: Message{Content: "Hello", Channel: ChannelSMS}, CustomerID: customerID}
	if _, err := c.ProcessMessage(ctx, req); err != nil {
		t.Fatalf("ProcessMessage: %v", err)
	}
	var body map[string]any
	if err := json.Unmarshal(s.lastBody("/api/message_processing"), &body); err != nil {
		t.Fatal(err)
	}
	if _, ok := body["zip_code"]; ok {
		t.Errorf("zip_code sent when none was given")
	}
	if body["company"] != FakeCompanyGUID {
		t.Errorf("company = %v; want the client's %s", body["company"], FakeCompanyGUID)
	}
	if m, ok := body["messages"].([]any); !ok || len(m) != 0 {
		t.Errorf("messages = %v; want []", body["messages"])
	}
	cand, _ := body["candidate_message"].(map[string]any)
	id, _ := cand["message_id"].(string)
	if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
		t.Errorf("generated message_id = %q; want 32 lowercase hex characters", id)
	}
	if ts := cand["send_timestamp"]; ts != "2025-01-15T10:00:00.123456+00:00" {
		t.Errorf("send_timestamp = %v; want the current UTC time 2025-01-15T10:00:00.123456+00:00", ts)
	}
	if _, err := c.ProcessMessage(ctx, req); err != nil {
		t.Fatal(err)
	}
	var again map[string]any
	_ = json.Unmarshal(s.lastBody("/api/message_processing"), &again)
	if again["candidate_message"].(map[string]any)["message_id"] == id {
		t.Errorf("two calls generated the same message_id")
	}
	// The request's own GUID wins over the client's: a client of another
	// company sends the request's, the one the server accepts.
	other := newTestClient(t, WithBaseURL(s.URL), WithCompanyGUID("6ba7b810-9dad-41d1-80b4-00c04fd430c8"))
	req.CompanyGUID = FakeCompanyGUID
	if got, err := other.ProcessMessage(ctx, req); err != nil || got.Company != FakeCompanyGUID {
		t.Errorf("ProcessMessage with CompanyGUID: company %v, %v; want %s", got, err, FakeCompanyGUID)
	}
}

func TestOptimizeMessage(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	req := conversation()
	req.Candidate.Channel = "" // optional here: only the content is sent
	req.Metadata = &CustomerMetadata{
		IsRepeatBorrower: new(bool), StateID: intp(5),
		CreditScoreBin: CreditScore650To700, RequestedLoanAmountBin: LoanAmount1000To2000,
		AgeBin: Age25To30, MonthlyIncomeBin: MonthlyIncome3000To4000, ApplicationReason: ReasonCarRepair,
	}
	got, err := c.OptimizeMessage(ctx, req)
	if err != nil {
		t.Fatalf("OptimizeMessage: %v", err)
	}
	sameJSON(t, "OptimizeMessage", s.lastBody("/api/message_optimizer"), `{
		"company": "`+FakeCompanyGUID+`",
		"customer_id": "`+customerID+`",
		"zip_code": "90210",
		"messages": `+conversationWire+`,
		"candidate_message": "Please upload your bank statement.",
		"is_repeat_borrower": 0,
		"state_id": 5,
		"credit_score_bin": "SCORE_650_700",
		"requested_loan_amount_bin": "AMOUNT_1000_2000",
		"age_bin": "AGE_25_30",
		"monthly_income_bin": "INCOME_3000_4000",
		"application_reason": "CAR_REPAIR"
	}`)
	want := &OptimizationResponse{MessageID: "msg-0001",
		OptimizedMessage: "Please upload your bank statement - reply YES and we will call you today.",
		OriginalMessage:  "Please upload your bank statement.", RecommendedChannel: ChannelSMS}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("OptimizeMessage() = %+v; want %+v", got, want)
	}

	// Unset metadata fields and an empty zip code are left out.
	req.ZipCode = ""
	req.Messages = nil
	req.Metadata = &CustomerMetadata{StateID: intp(1)}
	if _, err := c.OptimizeMessage(ctx, req); err != nil {
		t.Fatalf("OptimizeMessage: %v", err)
	}
	sameJSON(t, "OptimizeMessage (sparse)", s.lastBody("/api/message_optimizer"), `{
		"company": "`+FakeCompanyGUID+`", "customer_id": "`+customerID+`", "messages": [],
		"candidate_message": "Please upload your bank statement.", "state_id": 1}`)
}

func TestSubmitFeedback(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	s.setClock(time.Date(2025, 1, 15, 10, 30, 0, 123456000, time.UTC)) // inserted_at is the server's time
	got, err := c.SubmitFeedback(ctx, Feedback{
		MessageID: "msg-0001", CustomerResponded: true, Score: ScoreGood,
		ActualSentMessage: "Please upload your statement.",
		PositiveRewards:   []PositiveReward{RewardSendingPDFBankStatements, RewardLinkingChirp},
		SendTimestamp:     t0, ReplyTimestamp: t1,
	})
	if err != nil {
		t.Fatalf("SubmitFeedback: %v", err)
	}
	sameJSON(t, "SubmitFeedback", s.lastBody("/api/feedback"), `{
		"message_id": "msg-0001", "customer_responded": true, "score": "good",
		"actual_sent_message": "Please upload your statement.",
		"positive_rewards": ["sending_pdf_bank_statements", "linking_chirp"],
		"send_timestamp": "2025-01-15T10:30:00+00:00",
		"reply_timestamp": "2025-01-15T11:45:30.250000-05:00"}`)
	want := &FeedbackResponse{ID: "fb-0001", MessageID: "msg-0001", CustomerResponded: true, Score: ScoreGood,
		ActualSentMessage: "Please upload your statement.",
		PositiveRewards:   []PositiveReward{RewardSendingPDFBankStatements, RewardLinkingChirp},
		SendTimestamp:     t0, ReplyTimestamp: t1,
		InsertedAt: time.Date(2025, 1, 15, 10, 30, 0, 123456000, time.UTC)}
	if !reflect.DeepEqual(got.PositiveRewards, want.PositiveRewards) || got.ID != want.ID || got.MessageID != want.MessageID ||
		got.CustomerResponded != want.CustomerResponded || got.Score != want.Score || got.ActualSentMessage != want.ActualSentMessage ||
		!got.SendTimestamp.Equal(want.SendTimestamp) || !got.ReplyTimestamp.Equal(want.ReplyTimestamp) || !got.InsertedAt.Equal(want.InsertedAt) {
		t.Errorf("SubmitFeedback() = %+v; want %+v", got, want)
	}

	// Optional fields are left out; null answers decode to zero values.
	got, err = c.SubmitFeedback(ctx, Feedback{MessageID: "msg-0001", Score: ScoreNeutral})
	if err != nil {
		t.Fatalf("SubmitFeedback: %v", err)
	}
	sameJSON(t, "SubmitFeedback (minimal)", s.lastBody("/api/feedback"), `{"message_id": "msg-0001", "customer_responded": false, "score": "neutral"}`)
	if got.ActualSentMessage != "" || !got.SendTimestamp.IsZero() || !got.ReplyTimestamp.IsZero() || got.PositiveRewards == nil || len(got.PositiveRewards) != 0 {
		t.Errorf("SubmitFeedback() = %+v; want zero optional fields and empty rewards", got)
	}
}

func TestSubmitFeedbackBulk(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	items := []Feedback{
		{MessageID: "msg-0001", CustomerResponded: true, Score: ScoreGood, PositiveRewards: []PositiveReward{RewardSigningLoanAgreement}},
		{MessageID: "msg-0002", Score: ScoreBad, ReplyTimestamp: t0},
	}
	got, err := c.SubmitFeedbackBulk(ctx, items)
	if err != nil {
		t.Fatalf("SubmitFeedbackBulk: %v", err)
	}
	sameJSON(t, "SubmitFeedbackBulk", s.lastBody("/api/feedback/bulk"), `{"feedback": [
		{"message_id": "msg-0001", "customer_responded": true, "score": "good", "positive_rewards": ["signing_loan_agreement"]},
		{"message_id": "msg-0002", "customer_responded": false, "score": "bad", "reply_timestamp": "2025-01-15T10:30:00+00:00"}]}`)
	if !got.Success || got.Count != 2 || len(got.Feedback) != 2 ||
		got.Feedback[0].ID != "fb-0001" || got.Feedback[1].MessageID != "msg-0002" || got.Feedback[1].Score != ScoreBad ||
		!got.Feedback[1].ReplyTimestamp.Equal(t0) {
		t.Errorf("SubmitFeedbackBulk() = %+v", got)
	}
}

// TestFeedbackResponseDecoding feeds the feedback endpoints answers of every
// shape the server may send.
func TestFeedbackResponseDecoding(t *testing.T) {
	ctx := context.Background()
	const entry = `{"id":"fb-9","message_id":"m","customer_responded":false,"score":"bad","inserted_at":%s%s}`
	tests := []struct {
		name       string
		insertedAt string
		extra      string
		want       time.Time
		wantErr    string
	}{
		{"python isoformat, no offset", `"2025-01-15T10:30:00.123456"`, "", time.Date(2025, 1, 15, 10, 30, 0, 123456000, time.UTC), ""},
		{"Z", `"2025-01-15T10:30:00Z"`, "", t0, ""},
		{"offset", `"2025-01-15T11:45:30.250000-05:00"`, "", t1, ""},
		{"no fraction, no offset", `"2025-01-15T10:30:00"`, "", t0, ""},
		{"space separator", `"2025-01-15 10:30:00"`, "", t0, ""},
		{"unknown fields ignored", `"2025-01-15T10:30:00Z"`, `,"new_field":{"x":[1]}`, t0, ""},
		{"nulls", `"2025-01-15T10:30:00Z"`, `,"actual_sent_message":null,"positive_rewards":null,"send_timestamp":null,"reply_timestamp":null`, t0, ""},
		{"bad timestamp", `"yesterday"`, "", time.Time{}, "inserted_at"},
		{"inserted_at missing", `null`, "", time.Time{}, "missing inserted_at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := setup(t)
			s.script("/api/feedback", 200, fmt.Sprintf(entry, tt.insertedAt, tt.extra), nil)
			got, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreBad})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("SubmitFeedback() error = %v; want one naming %q", err, tt.wantErr)
				}
				if got != nil {
					t.Errorf("SubmitFeedback() = %+v with an error; want nil", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("SubmitFeedback: %v", err)
			}
			if !got.InsertedAt.Equal(tt.want) {
				t.Errorf("InsertedAt = %v; want %v", got.InsertedAt, tt.want)
			}
		})
	}
}

// TestMissingResponseFields: an answer without a required field is an
// error naming it, never a half-empty value.
func TestMissingResponseFields(t *testing.T) {
	ctx := context.Background()
	fb := `"message_id":"m","customer_responded":true,"score":"good","inserted_at":"2025-01-15T10:30:00Z"`
	tests := []struct {
		name, path, body, want string
		call                   func(c *Client) (any, error)
	}{
		{"processing company", "/api/message_processing", `{"customer_id":"c","candidate_message":{"content":"x"}}`, "company",
			func(c *Client) (any, error) { return c.ProcessMessage(ctx, conversation()) }},
		{"processing candidate", "/api/message_processing", `{"company":"a","customer_id":"c"}`, "candidate_message.content",
			func(c *Client) (any, error) { return c.ProcessMessage(ctx, conversation()) }},
		{"optimizer message_id", "/api/message_optimizer", `{"optimized_message":"x","recommended_channel":"SMS"}`, "message_id",
			func(c *Client) (any, error) { return c.OptimizeMessage(ctx, conversation()) }},
		{"optimizer channel", "/api/message_optimizer", `{"message_id":"m","optimized_message":"x"}`, "missing recommended_channel",
			func(c *Client) (any, error) { return c.OptimizeMessage(ctx, conversation()) }},
		{"feedback id", "/api/feedback", `{` + fb + `}`, "id",
			func(c *Client) (any, error) { return c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}) }},
		{"feedback score", "/api/feedback", `{"id":"f","message_id":"m","customer_responded":true,"inserted_at":"2025-01-15T10:30:00Z"}`, "score",
			func(c *Client) (any, error) { return c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}) }},
		{"bulk success", "/api/feedback/bulk", `{"count":1,"feedback":[]}`, "success",
			func(c *Client) (any, error) {
				return c.SubmitFeedbackBulk(ctx, []Feedback{{MessageID: "m", Score: ScoreGood}})
			}},
		{"bulk item", "/api/feedback/bulk", `{"success":true,"count":1,"feedback":[{` + fb + `}]}`, "feedback[0].id",
			func(c *Client) (any, error) {
				return c.SubmitFeedbackBulk(ctx, []Feedback{{MessageID: "m", Score: ScoreGood}})
			}},
		{"not JSON", "/api/feedback", `<html>oops</html>`, "malformed JSON response (text/html)",
			func(c *Client) (any, error) { return c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}) }},
		{"empty body", "/api/message_optimizer", ``, "empty body",
			func(c *Client) (any, error) { return c.OptimizeMessage(ctx, conversation()) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := setup(t)
			s.script(tt.path, 200, tt.body, nil)
			got, err := tt.call(c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v; want one naming %q", err, tt.want)
			}
			if !reflect.ValueOf(got).IsNil() {
				t.Errorf("got %+v with the error; want nil", got)
			}
		})
	}
}

// TestUnknownEnumsKept: a channel, score or reward this version does not
// know is kept as the server sent it; only a missing field is an error.
func TestUnknownEnumsKept(t *testing.T) {
	ctx := context.Background()
	for _, ch := range []Channel{"WHATSAPP", "sms"} {
		s, c := setup(t)
		s.script("/api/message_optimizer", 200, `{"message_id":"m-1","optimized_message":"x","recommended_channel":"`+string(ch)+`"}`, nil)
		got, err := c.OptimizeMessage(ctx, conversation())
		if err != nil || got.RecommendedChannel != ch || got.MessageID != "m-1" {
			t.Errorf("OptimizeMessage() with channel %q = %+v, %v; want it kept", ch, got, err)
		}
	}
	s, c := setup(t)
	s.script("/api/feedback", 200, `{"id":"f1","message_id":"m","customer_responded":true,"score":"excellent","positive_rewards":["paid_early"],"inserted_at":"2025-01-15T10:30:00"}`, nil)
	got, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood})
	if err != nil || got.Score != "excellent" || len(got.PositiveRewards) != 1 || got.PositiveRewards[0] != "paid_early" {
		t.Errorf("SubmitFeedback() = %+v, %v; want the unknown score and reward kept", got, err)
	}
}

// TestTimestampValueNotQuoted: a malformed response timestamp is named, not
// quoted: the value is the server's text.
func TestTimestampValueNotQuoted(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	s.script("/api/feedback", 200, `{"id":"f1","message_id":"m","customer_responded":true,"score":"good","inserted_at":"when `+FakeAPIKey+`"}`, nil)
	_, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood})
	if err == nil || !strings.Contains(err.Error(), "inserted_at: not an ISO 8601 timestamp") {
		t.Fatalf("error does not name inserted_at (withheld: it may quote the secret)")
	}
	noSecret(t, "error", err.Error())
	if strings.Contains(err.Error(), "when") {
		t.Errorf("error quotes the server's value")
	}
}

// TestBulkNeverSilentlyPartial: a failure flag or a short count is an error
// that comes with the server's full answer.
func TestBulkNeverSilentlyPartial(t *testing.T) {
	ctx := context.Background()
	one := `{"id":"f1","message_id":"a","customer_responded":true,"score":"good","inserted_at":"2025-01-15T10:30:00Z"}`
	items := []Feedback{{MessageID: "a", Score: ScoreGood}, {MessageID: "b", Score: ScoreBad}}
	tests := []struct {
		name, body, want string
		success          bool // the answer returned with the error: as the server sent it
		count, entries   int
	}{
		{"short count", `{"success":true,"count":1,"feedback":[` + one + `]}`, "stored 1 of 2", true, 1, 1},
		{"failure flag", `{"success":false,"count":0,"feedback":[]}`, "reported failure", false, 0, 0},
		{"short list", `{"success":true,"count":2,"feedback":[` + one + `]}`, "(1 returned)", true, 2, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := setup(t)
			s.script("/api/feedback/bulk", 200, tt.body, nil)
			got, err := c.SubmitFeedbackBulk(ctx, items)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("SubmitFeedbackBulk() error = %v; want one saying %q", err, tt.want)
			}
			if got == nil {
				t.Fatalf("SubmitFeedbackBulk() returned no answer with the error")
			}
			if got.Success != tt.success || got.Count != tt.count || len(got.Feedback) != tt.entries {
				t.Errorf("answer with the error: success %v, count %d, %d entries; want the server's %v, %d, %d",
					got.Success, got.Count, len(got.Feedback), tt.success, tt.count, tt.entries)
			}
			if tt.entries > 0 && got.Feedback[0].ID != "f1" {
				t.Errorf("answer with the error: entry id %q; want the server's f1", got.Feedback[0].ID)
			}
		})
	}
}

// TestBulkPartialMatchesErrPartial: a partial bulk answer is an error that
// matches ErrPartial, returned with the server's full answer.
func TestBulkPartialMatchesErrPartial(t *testing.T) {
	ctx := context.Background()
	const item = `{"id":"f1","message_id":"m","customer_responded":true,"score":"good","inserted_at":"2025-01-15T10:30:00"}`
	for _, body := range []string{
		`{"success":false,"count":0,"feedback":[]}`,
		`{"success":true,"count":1,"feedback":[` + item + `]}`,
	} {
		s, c := setup(t)
		s.script("/api/feedback/bulk", 200, body, nil)
		got, err := c.SubmitFeedbackBulk(ctx, []Feedback{{MessageID: "m", Score: ScoreGood}, {MessageID: "n", Score: ScoreBad}})
		if !errors.Is(err, ErrPartial) || got == nil {
			t.Errorf("SubmitFeedbackBulk() on %s = %v, %v; want the answer and ErrPartial", body, got, err)
		}
	}
}

// TestValidation hits each input rule once: the error is a *ValidationError
// naming the field, and nothing reaches the server, not even a token request.
func TestValidation(t *testing.T) {
	ctx := context.Background()
	valid := conversation
	with := func(f func(*MessageRequest)) MessageRequest { r := valid(); f(&r); return r }
	process := func(r MessageRequest) func(*Client) error {
		return func(c *Client) error { _, err := c.ProcessMessage(ctx, r); return err }
	}
	optimize := func(r MessageRequest) func(*Client) error {
		return func(c *Client) error { _, err := c.OptimizeMessage(ctx, r); return err }
	}
	feedback := func(f Feedback) func(*Client) error {
		return func(c *Client) error { _, err := c.SubmitFeedback(ctx, f); return err }
	}
	bulk := func(fs ...Feedback) func(*Client) error {
		return func(c *Client) error { _, err := c.SubmitFeedbackBulk(ctx, fs); return err }
	}
	good := Feedback{MessageID: "m", Score: ScoreGood}
	tests := []struct {
		name  string
		call  func(*Client) error
		field string
	}{
		{"customer id not a UUID", process(with(func(r *MessageRequest) { r.CustomerID = "cust-42" })), "CustomerID"},
		{"customer id empty", optimize(with(func(r *MessageRequest) { r.CustomerID = "" })), "CustomerID"},
		{"customer id one short", process(with(func(r *MessageRequest) { r.CustomerID = customerID[:35] })), "CustomerID"},
		{"customer id and a 0", process(with(func(r *MessageRequest) { r.CustomerID = customerID + "0" })), "CustomerID"},
		{"customer id and a hyphen", optimize(with(func(r *MessageRequest) { r.CustomerID = customerID + "-" })), "CustomerID"},
		{"customer id of 40 characters", optimize(with(func(r *MessageRequest) { r.CustomerID = customerID + "0000" })), "CustomerID"},
		{"company GUID not a UUID", process(with(func(r *MessageRequest) { r.CompanyGUID = "acme" })), "CompanyGUID"},
		{"company GUID and a 0", process(with(func(r *MessageRequest) { r.CompanyGUID = FakeCompanyGUID + "0" })), "CompanyGUID"},
		{"company GUID and a hyphen", optimize(with(func(r *MessageRequest) { r.CompanyGUID = FakeCompanyGUID + "-" })), "CompanyGUID"},
		{"company GUID of 40 characters", optimize(with(func(r *MessageRequest) { r.CompanyGUID = FakeCompanyGUID + "abcd" })), "CompanyGUID"},
		{"zip code of 4 digits", process(with(func(r *MessageRequest) { r.ZipCode = "9021" })), "ZipCode"},
		{"zip code with a letter", optimize(with(func(r *MessageRequest) { r.ZipCode = "9021a" })), "ZipCode"},
		{"empty content", process(with(func(r *MessageRequest) { r.Messages[1].Content = "  " })), "Messages[1].Content"},
		{"empty candidate", optimize(with(func(r *MessageRequest) { r.Candidate.Content = "" })), "Candidate.Content"},
		{"bad channel", process(with(func(r *MessageRequest) { r.Messages[0].Channel = "sms" })), "Messages[0].Channel"},
		{"missing channel", process(with(func(r *MessageRequest) { r.Candidate.Channel = "" })), "Candidate.Channel"},
		{"state id 0", optimize(with(func(r *MessageRequest) { r.Metadata = &CustomerMetadata{StateID: intp(0)} })), "Metadata.StateID"},
		{"credit score bin", optimize(with(func(r *MessageRequest) { r.Metadata = &CustomerMetadata{CreditScoreBin: "SCORE_900"} })), "Metadata.CreditScoreBin"},
		{"loan amount bin", optimize(with(func(r *MessageRequest) { r.Metadata = &CustomerMetadata{RequestedLoanAmountBin: "LOTS"} })), "Metadata.RequestedLoanAmountBin"},
		{"age bin", optimize(with(func(r *MessageRequest) { r.Metadata = &CustomerMetadata{AgeBin: "AGE_99"} })), "Metadata.AgeBin"},
		{"income bin", optimize(with(func(r *MessageRequest) { r.Metadata = &CustomerMetadata{MonthlyIncomeBin: "RICH"} })), "Metadata.MonthlyIncomeBin"},
		{"application reason", optimize(with(func(r *MessageRequest) { r.Metadata = &CustomerMetadata{ApplicationReason: "FUN"} })), "Metadata.ApplicationReason"},
		{"metadata checked by ProcessMessage too", process(with(func(r *MessageRequest) { r.Metadata = &CustomerMetadata{StateID: intp(-1)} })), "Metadata.StateID"},
		{"feedback without message id", feedback(Feedback{Score: ScoreGood}), "MessageID"},
		{"feedback without score", feedback(Feedback{MessageID: "m"}), "Score"},
		{"feedback score uppercase", feedback(Feedback{MessageID: "m", Score: "GOOD"}), "Score"},
		{"feedback reward", feedback(Feedback{MessageID: "m", Score: ScoreGood, PositiveRewards: []PositiveReward{RewardLinkingChirp, "LINKING_CHIRP"}}), "PositiveRewards[1]"},
		{"nil bulk", func(c *Client) error { _, err := c.SubmitFeedbackBulk(ctx, nil); return err }, "Items"},
		{"empty bulk", func(c *Client) error { _, err := c.SubmitFeedbackBulk(ctx, []Feedback{}); return err }, "Items"},
		{"bulk item", bulk(good, good, Feedback{MessageID: "m", Score: "great"}), "Items[2].Score"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := setup(t)
			err := tt.call(c)
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error = %v; want a *ValidationError", err)
			}
			if ve.Field != tt.field {
				t.Errorf("ValidationError.Field = %q; want %q", ve.Field, tt.field)
			}
			if !strings.HasPrefix(err.Error(), "apala: ") || !strings.Contains(err.Error(), tt.field) {
				t.Errorf("error text %q; want it prefixed and naming %s", err, tt.field)
			}
			if n := s.totalRequests(); n != 0 {
				t.Errorf("%d requests reached the server; want none", n)
			}
		})
	}
	// A company GUID given to the client is checked as strictly: an
	// ErrConfig from NewClient and NewClientFromEnv, nothing sent.
	for _, guid := range []string{FakeCompanyGUID + "0", FakeCompanyGUID + "-", FakeCompanyGUID + "0000", FakeCompanyGUID[:35], "acme"} {
		t.Run("WithCompanyGUID "+guid, func(t *testing.T) {
			s := startServer(t)
			t.Setenv(EnvAPIKey, FakeAPIKey)
			t.Setenv(EnvBaseURL, s.URL)
			t.Setenv(EnvCompanyGUID, guid)
			for what, newClient := range map[string]func() (*Client, error){
				"NewClient":        func() (*Client, error) { return NewClient(FakeAPIKey, WithBaseURL(s.URL), WithCompanyGUID(guid)) },
				"NewClientFromEnv": func() (*Client, error) { return NewClientFromEnv() },
			} {
				c, err := newClient()
				if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "WithCompanyGUID") || errors.As(err, new(*ValidationError)) {
					t.Errorf("%s() error = %v; want an ErrConfig for WithCompanyGUID", what, err)
				}
				if c != nil { // accepted: a call would send the GUID
					_, _ = c.ProcessMessage(ctx, MessageRequest{Candidate: Message{Content: "Hi", Channel: ChannelSMS}, CustomerID: customerID})
					c.Close()
				}
			}
			if n := s.totalRequests(); n != 0 {
				t.Errorf("%d requests reached the server; want none", n)
			}
		})
	}
	t.Run("no company GUID anywhere", func(t *testing.T) {
		s := startServer(t)
		c, err := NewClient(FakeAPIKey, WithBaseURL(s.URL))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.ProcessMessage(ctx, valid())
		if !errors.Is(err, ErrConfig) || errors.As(err, new(*ValidationError)) || !strings.Contains(err.Error(), EnvCompanyGUID) {
			t.Errorf("error = %v; want an ErrConfig pointing at %s", err, EnvCompanyGUID)
		}
		if s.totalRequests() != 0 {
			t.Errorf("a request reached the server")
		}
	})
}

// TestMessageAPIErrors: the server's refusals come back as *APIError with
// its message, through the same retry and replay rules as Do.
func TestMessageAPIErrors(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	s.script("/api/message_optimizer", 422, `{"errors":{"detail":"customer_id is unknown"}}`, nil)
	_, err := c.OptimizeMessage(ctx, conversation())
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 422 || ae.Message != "customer_id is unknown" || ae.Path != "/api/message_optimizer" {
		t.Fatalf("OptimizeMessage() error = %v; want *APIError 422 with the server's message", err)
	}
	if n := s.Requests("/api/message_optimizer"); n != 1 {
		t.Errorf("422 sent %d times; want 1 (never retried)", n)
	}

	for i := 0; i < 3; i++ {
		s.Fail("/api/feedback", 503, "maintenance")
	}
	_, err = c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood})
	if !errors.Is(err, ErrServer) || !errors.As(err, &ae) || ae.Message != "maintenance" {
		t.Fatalf("SubmitFeedback() error = %v; want ErrServer with the server's message", err)
	}
	if n := s.Requests("/api/feedback"); n != 3 {
		t.Errorf("503 sent %d times; want 3 (the first attempt and 2 retries)", n)
	}

	// A revoked token is replaced and the call replayed once.
	s.RevokeTokens()
	if _, err := c.SubmitFeedbackBulk(ctx, []Feedback{{MessageID: "m", Score: ScoreGood}}); err != nil {
		t.Fatalf("SubmitFeedbackBulk after revocation: %v", err)
	}
	if n := s.Requests("/api/feedback/bulk"); n != 2 {
		t.Errorf("bulk sent %d times; want 2 (401, then the replay)", n)
	}
}

// ---- the fault matrix ----

// TestFaultMatrix drives each endpoint family (token, refresh, API call)
// through each fault and checks the error kind, the number of attempts, that
// no secret went to another host or into the error, that nothing was stored
// from a bad answer, and that every response body was closed.
func TestFaultMatrix(t *testing.T) {
	ctx := context.Background()
	type family struct {
		name, path string
		call       func(c *Client) error
	}
	families := []family{
		{"token", pathToken, func(c *Client) error { _, err := c.Authenticate(ctx); return err }},
		{"refresh", pathRefresh, func(c *Client) error { _, err := c.RefreshAccessToken(ctx); return err }},
		{"api", "/api/feedback", func(c *Client) error {
			_, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood})
			return err
		}},
	}
	const retries = 2
	isConn := func(err error) bool { var ue *url.Error; return errors.Is(err, ErrConnection) && errors.As(err, &ue) }
	isServer := func(err error) bool { return errors.Is(err, ErrServer) }
	isRedirect := func(err error) bool { var ae *APIError; return errors.As(err, &ae) && ae.StatusCode/100 == 3 }
	isMalformed := func(err error) bool {
		var ae *APIError
		return err != nil && !errors.As(err, &ae) && !errors.Is(err, ErrConnection) && strings.Contains(err.Error(), "malformed JSON")
	}
	isMissing := func(err error) bool {
		return err != nil && (strings.Contains(err.Error(), "no valid access_token") || strings.Contains(err.Error(), "missing"))
	}
	isTooBig := func(err error) bool { return err != nil && strings.Contains(err.Error(), "limit") }

	// Each client reads a clock of its own, stopped at start (the subtests
	// run in parallel, so not the package-wide one of useFakeClock): expiries
	// and Retry-After dates are exact instants, whenever a subtest runs.
	start := time.Date(2025, 1, 15, 10, 0, 0, 0, time.UTC)
	jwtExp := start.Add(30 * time.Minute)

	// authAnswer builds a fault's 200 answer per family.
	authAnswer := func(f family, expiresIn string) string {
		tok := jwtExpiring(jwtExp)
		fields := `"access_token":"` + tok + `","token_type":"Bearer"`
		if expiresIn != "" {
			fields += `,"expires_in":` + expiresIn
		}
		if f.path == pathToken {
			fields += `,"refresh_token":"r-SECRET","company_id":"c","company_name":"n"`
		}
		return "{" + fields + "}"
	}
	missingFields := map[string]string{
		pathToken:       `{"token_type":"Bearer","expires_in":3600,"company_id":"c"}`,
		pathRefresh:     `{"token_type":"Bearer","expires_in":3600}`,
		"/api/feedback": `{"message_id":"m","customer_responded":true}`,
	}

	type fault struct {
		name     string
		refuse   bool
		once     bool // only the first attempt is faulty
		timeout  time.Duration
		serve    func(f family, other string, w http.ResponseWriter, r *http.Request)
		authOnly bool // token and refresh families only
		want     func(error) bool
		attempts int       // on the family's path
		expires  time.Time // for a success: the expiry Token must show (zero: unchecked)
		maxRead  int64     // bytes the client may read from all bodies (0: unchecked)
	}
	status := func(code int, body string) func(family, string, http.ResponseWriter, *http.Request) {
		return func(_ family, _ string, w http.ResponseWriter, _ *http.Request) {
			if strings.HasPrefix(body, "<") {
				w.Header().Set("Content-Type", "text/html")
			} else {
				w.Header().Set("Content-Type", "application/json")
			}
			w.WriteHeader(code)
			_, _ = io.WriteString(w, body)
		}
	}
	answer := func(body func(f family) string) func(family, string, http.ResponseWriter, *http.Request) {
		return func(f family, _ string, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, body(f))
		}
	}
	redirect := func(code int) func(family, string, http.ResponseWriter, *http.Request) {
		return func(_ family, other string, w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, other+r.URL.Path, code)
		}
	}
	big := func(chunked bool) func(family, string, http.ResponseWriter, *http.Request) {
		return func(_ family, _ string, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			if !chunked {
				w.Header().Set("Content-Length", fmt.Sprint(20<<20))
			}
			chunk := bytes.Repeat([]byte(" "), 64<<10)
			for i := 0; i < 20<<20/len(chunk); i++ {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}
	}
	faults := []fault{
		{name: "connection refused", refuse: true, want: isConn, attempts: 1 + retries},
		{name: "reset mid-body", want: isConn, attempts: 1 + retries,
			serve: func(_ family, _ string, w http.ResponseWriter, _ *http.Request) {
				conn, buf, err := http.NewResponseController(w).Hijack()
				if err != nil {
					return
				}
				_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"access_token\":\"ab")
				_ = buf.Flush()
				if tc, ok := conn.(*net.TCPConn); ok {
					_ = tc.SetLinger(0) // close with RST
				}
				conn.Close()
			}},
		{name: "truncated body", want: isConn, attempts: 1 + retries,
			serve: func(_ family, _ string, w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Length", "400")
				_, _ = io.WriteString(w, `{"access_token":"ab`)
				panic(http.ErrAbortHandler)
			}},
		{name: "hang past the per-attempt timeout", timeout: 300 * time.Millisecond, want: isConn, attempts: 1 + retries,
			serve: func(_ family, _ string, _ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }},
		{name: "500", serve: status(500, `{"error":"boom"}`), want: isServer, attempts: 1 + retries},
		{name: "502", serve: status(502, `{"error":"bad gateway"}`), want: isServer, attempts: 1 + retries},
		{name: "503", serve: status(503, `{"error":"maintenance"}`), want: isServer, attempts: 1 + retries},
		{name: "504", serve: status(504, `{"error":"timeout"}`), want: isServer, attempts: 1 + retries},
		{name: "429 Retry-After seconds", once: true, attempts: 2,
			serve: func(f family, o string, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", "1")
				status(429, `{"error":"slow down"}`)(f, o, w, r)
			}},
		{name: "429 Retry-After date", once: true, attempts: 2,
			serve: func(f family, o string, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", start.Add(time.Second).Format(http.TimeFormat))
				status(429, `{"error":"slow down"}`)(f, o, w, r)
			}},
		{name: "307 to another host", serve: redirect(307), want: isRedirect, attempts: 1},
		{name: "308 to another host", serve: redirect(308), want: isRedirect, attempts: 1},
		{name: "HTML error page", serve: status(502, "<html><body>SECRET proxy error</body></html>"), want: isServer, attempts: 1 + retries},
		{name: "HTML with 200", serve: status(200, "<html><body>login</body></html>"), want: isMalformed, attempts: 1},
		{name: "malformed JSON", serve: status(200, `{"access_token": "abc`), want: isMalformed, attempts: 1},
		{name: "missing required fields", serve: answer(func(f family) string { return missingFields[f.path] }), want: isMissing, attempts: 1},
		{name: "20 MiB body", serve: big(false), want: isTooBig, attempts: 1, maxRead: 10<<20 + 1},
		{name: "20 MiB chunked body", serve: big(true), want: isTooBig, attempts: 1, maxRead: 10<<20 + 1},
		{name: "expires_in 0", authOnly: true, attempts: 1, expires: jwtExp,
			serve: answer(func(f family) string { return authAnswer(f, "0") })},
		{name: "expires_in negative", authOnly: true, attempts: 1, expires: jwtExp,
			serve: answer(func(f family) string { return authAnswer(f, "-3600") })},
		{name: "expires_in absent", authOnly: true, attempts: 1, expires: jwtExp,
			serve: answer(func(f family) string { return authAnswer(f, "") })},
		{name: "expires_in absurd", authOnly: true, attempts: 1, expires: start.Add(10 * 365 * 24 * time.Hour), // the cap
			serve: answer(func(f family) string { return authAnswer(f, "9223372036854775807") })},
		{name: "expires_in 3600", authOnly: true, attempts: 1, expires: start.Add(time.Hour),
			serve: answer(func(f family) string { return authAnswer(f, "3600") })},
	}

	for _, fam := range families {
		for _, ft := range faults {
			if ft.authOnly && fam.path == "/api/feedback" {
				continue
			}
			fam, ft := fam, ft
			t.Run(fam.name+"/"+ft.name, func(t *testing.T) {
				t.Parallel()
				s := startServer(t)
				var otherHits atomic.Int32
				other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					otherHits.Add(1)
				}))
				defer other.Close()

				ct := &countingTransport{base: http.DefaultTransport.(*http.Transport).Clone(), dead: deadAddr(t), attempts: map[string]int{}}
				defer ct.base.(*http.Transport).CloseIdleConnections()
				timeout := ft.timeout
				if timeout == 0 {
					timeout = time.Minute
				}
				c := newTestClient(t, WithBaseURL(s.URL), WithHTTPClient(&http.Client{Transport: ct}),
					WithMaxRetries(retries), WithTimeout(timeout))
				clk := &fakeClock{t: start} // as NewClient reads timeNow and timeSince
				c.now, c.since, c.baseTime = clk.Now, clk.Since, clk.Now()
				if fam.path != pathToken {
					access, refresh := s.grant()
					holdToken(c, access, refresh, 3600, 0)
				}
				before := c.Token()

				var faulted atomic.Int32
				s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
					if r.URL.Path != fam.path || ft.serve == nil || (ft.once && faulted.Add(1) > 1) {
						return false
					}
					ft.serve(fam, other.URL, w, r)
					return true
				})
				if ft.refuse {
					ct.refuse = fam.path
				}

				err := fam.call(c)
				if got := ct.count(fam.path); got != ft.attempts {
					t.Errorf("attempts = %d; want %d", got, ft.attempts)
				}
				if otherHits.Load() != 0 {
					t.Errorf("a request reached the other host")
				}
				after := c.Token()
				if ft.want == nil {
					if err != nil {
						t.Fatalf("error = %v; want success", err)
					}
					if !ft.expires.IsZero() && !after.ExpiresAt.Equal(ft.expires) {
						t.Errorf("ExpiresAt = %v; want %v", after.ExpiresAt, ft.expires)
					}
				} else {
					if !ft.want(err) {
						t.Errorf("error = %v; want another kind", err)
					}
					noSecret(t, "error", err.Error())
					if strings.Contains(err.Error(), "<html") {
						t.Errorf("error echoes the HTML page: %v", err)
					}
					if after.AccessToken != before.AccessToken {
						t.Errorf("a token was stored from a failed answer")
					}
				}
				c.Close()
				if n := ct.open.Load(); n != 0 {
					t.Errorf("%d response bodies left open", n)
				}
				if n := ct.read.Load(); ft.maxRead > 0 && n > ft.maxRead {
					t.Errorf("bytes read from response bodies = %d; want at most %d", n, ft.maxRead)
				}
			})
		}
	}
}

// ---- fuzzing ----

// The tokens the fuzz targets' clients hold (their key is FakeAPIKey).
const (
	fuzzAccess  = "old-SECRET-access"
	fuzzRefresh = "old-SECRET-refresh"
)

func FuzzAuthResponse(f *testing.F) {
	ctx := context.Background()
	for _, seed := range []string{
		`{"access_token":"a.b.c","refresh_token":"r","token_type":"Bearer","expires_in":3600,"company_id":"x","company_name":"y"}`,
		`{"access_token":"a.b.c","expires_in":0}`,
		`{"access_token":"a.b.c","expires_in":-1}`,
		`{"access_token":"a.b.c","expires_in":9223372036854775807}`,
		`{"access_token":"` + jwtExpiring(time.Unix(1e10, 0)) + `"}`,
		`{"access_token":"eyJhbGciOiJub25lIn0.eyJleHAiOjF9.x"}`,
		`{"access_token":"eyJhbGciOiJub25lIn0.eyJleHAiOiJzb29uIn0.x"}`,
		`{"access_token":""}`,
		`{"access_token":"has space"}`,
		`{"access_token":null,"refresh_token":"r"}`,
		`{"access_token":"ok","refresh_token":"bad\u0000"}`,
		`{"access_token":1}`,
		`[]`, `null`, ``, `{`, `<html></html>`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c := newTestClient(t, WithMaxRetries(0), WithHTTPClient(&http.Client{Transport: &cannedTransport{header: jsonHeader, body: body}}))
		defer c.Close()
		resp, err := c.Authenticate(ctx)
		if err != nil {
			if c.Token().AccessToken != "" {
				t.Fatalf("a token was stored from a refused answer")
			}
			if strings.Contains(err.Error(), FakeAPIKey) {
				t.Fatalf("the error holds the API key")
			}
			return
		}
		if !json.Valid(body) || resp.AccessToken == "" || resp.AccessToken != c.Token().AccessToken {
			t.Fatalf("success on an invalid body, or an answer that is not the stored token")
		}
		checkHeld(t, c)
	})
}

func FuzzRefreshResponse(f *testing.F) {
	ctx := context.Background()
	for _, seed := range []string{
		`{"access_token":"a.b.c","token_type":"Bearer","expires_in":3600}`,
		`{"access_token":"a.b.c","expires_in":3600,"refresh_token":"rotated"}`,
		`{"access_token":"a.b.c","refresh_token":""}`,
		`{"access_token":"a.b.c","refresh_token":"bad token"}`,
		`{"access_token":"` + jwtExpiring(time.Unix(1, 0)) + `"}`,
		`{"expires_in":3600}`,
		`{"access_token":"\u00e9"}`,
		`{}`, `"a.b.c"`, `{"access_token":"a.b.c"}{}`, `{"access_token":"a.b.c"`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c := newTestClient(t, WithMaxRetries(0), WithHTTPClient(&http.Client{Transport: &cannedTransport{header: jsonHeader, body: body}}))
		defer c.Close()
		holdToken(c, fuzzAccess, fuzzRefresh, 3600, 0)
		resp, err := c.RefreshAccessToken(ctx)
		if err != nil {
			if c.Token().AccessToken != fuzzAccess {
				t.Fatalf("the token was replaced by a refused answer")
			}
			noSecret(t, "error", err.Error())
			return
		}
		if !json.Valid(body) || resp.AccessToken == "" || resp.AccessToken != c.Token().AccessToken {
			t.Fatalf("success on an invalid body, or an answer that is not the stored token")
		}
		if r := c.pair.Load().refresh; !visibleASCII(r) {
			t.Fatalf("an invalid refresh token is held")
		}
		checkHeld(t, c)
	})
}

func FuzzAPIErrorBody(f *testing.F) {
	ctx := context.Background()
	for _, seed := range []struct {
		status int
		ctype  string
		body   string
	}{
		{400, "application/json", `{"error":"bad request"}`},
		{401, "application/json", `{"errors":{"detail":"Unauthorized"}}`},
		{422, "application/json", `{"errors":{"detail":{"field":["is invalid"]}}}`},
		{422, "application/json", `{"detail":[{"msg":"field required"}]}`},
		{403, "application/json", `{"message":"key ` + FakeAPIKey + ` lacks permissions"}`},
		{500, "application/json", `{"error":"token ` + fuzzAccess + ` expired"}`},
		{502, "text/html", `<html><body>` + FakeAPIKey + `</body></html>`},
		{503, "", ``},
		{429, "application/json", `{"error":null}`},
		{404, "application/json; charset=utf-8", `"not found"`},
	} {
		f.Add(seed.status, seed.ctype, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, status int, ctype string, body []byte) {
		if status < 300 || status > 599 {
			status = 300 + (status%300+300)%300
		}
		c := newTestClient(t, WithMaxRetries(0), WithHTTPClient(&http.Client{Transport: &cannedTransport{status: status, header: http.Header{"Content-Type": {ctype}}, body: body}}))
		defer c.Close()
		holdToken(c, fuzzAccess, fuzzRefresh, 3600, 0)
		err := c.Do(ctx, "POST", "/api/feedback", map[string]int{"n": 1}, nil)
		var ae *APIError
		if !errors.As(err, &ae) || ae.StatusCode != status {
			t.Fatalf("status %d: error %v is not an *APIError with that status", status, err)
		}
		for _, s := range []string{err.Error(), ae.Message, fmt.Sprintf("%+v", err)} {
			for _, secret := range []string{FakeAPIKey, fuzzAccess, fuzzRefresh} {
				if strings.Contains(s, secret) {
					t.Fatalf("status %d: the error holds a secret", status)
				}
			}
		}
		if !strings.HasPrefix(err.Error(), "apala: ") {
			t.Fatalf("error %q lacks the prefix", err)
		}
		if status == 401 && !errors.Is(err, ErrUnauthorized) || status >= 500 && !errors.Is(err, ErrServer) {
			t.Fatalf("status %d: error %v does not match its sentinel", status, err)
		}
	})
}

func FuzzRetryAfter(f *testing.F) {
	now := time.Date(2025, 1, 15, 10, 30, 0, 0, time.UTC)
	for _, seed := range []string{
		"0", "1", "120", "-5", "99999999999999999999", " 7 ", "1.5", "",
		"Wed, 15 Jan 2025 10:30:30 GMT", "Wed, 15 Jan 2025 09:00:00 GMT", "Monday, 15-Jan-25 10:31:00 GMT",
		"Wed Jan 15 10:30:10 2025", "Fri, 31 Dec 9999 23:59:59 GMT", "soon",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v string) {
		// The literal bound, not maxRetryAfter: the oracle must not move
		// with the constant it judges.
		d := parseRetryAfter(v, now)
		if d < 0 || d > 60*time.Second {
			t.Fatalf("parseRetryAfter(%q) = %v; want within [0s, 60s]", v, d)
		}
	})
}

func FuzzBaseURL(f *testing.F) {
	for _, seed := range []string{
		"https://api.example.com", "https://gw.example/apala/", "http://localhost:4000", "http://127.0.0.2:1/x",
		"http://[::1]:4000", "http://example.com", "ftp://example.com", "https://user:pw@example.com",
		"//example.com", "/api", "", "https://", "https://exa mple.com", "https://example.com/a?b#c",
		"http://localhost.evil.com", "http://0x7f000001", "HTTPS://EXAMPLE.COM", "http://[::ffff:127.0.0.1]",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := NewClient(FakeAPIKey, WithBaseURL(raw))
		if err != nil {
			if strings.Contains(err.Error(), FakeAPIKey) {
				t.Fatalf("the error holds the API key")
			}
			// Refused without WithInsecureHTTP, accepted with it: the
			// clear-text rule refused it, so the host must not be loopback.
			if ci, err := NewClient(FakeAPIKey, WithBaseURL(raw), WithInsecureHTTP()); err == nil {
				u, perr := url.Parse(ci.baseStr)
				ci.Close()
				if perr == nil && u.Scheme == "http" && loopbackOracle(u.Hostname()) {
					t.Fatalf("refused clear-text HTTP to %q, a loopback host", u.Hostname())
				}
			}
			return
		}
		defer c.Close()
		u, err := url.Parse(c.baseStr)
		if err != nil {
			t.Fatalf("the base URL kept does not parse: %v", err)
		}
		switch {
		case u.Scheme != "http" && u.Scheme != "https":
			t.Fatalf("accepted scheme %q", u.Scheme)
		case u.Host == "" || u.User != nil:
			t.Fatalf("accepted a URL without a host or with user info")
		case u.Scheme == "http" && !loopbackOracle(u.Hostname()):
			t.Fatalf("accepted clear-text HTTP to %q, a host that is not loopback", u.Hostname())
		case !validPath("/api/feedback") || strings.Contains(c.baseStr+"/api/feedback", "#"):
			t.Fatalf("the base URL makes request URLs with a fragment")
		}
		_ = fmt.Sprint(c)
	})
}

// ---- soak ----

// soakFaults injects failures on the API paths, deciding per Idempotency-Key
// so that it knows which calls it made fail for good: a few keys get 503 on
// every attempt, others at most two transient 503s (which the two retries
// absorb); it also notes calls refused 401 twice (revoked again before the
// replay), which the one replay cannot absorb. It answers every API request
// itself, the 401s included: whether a token is accepted is read once, by
// the server's own check under the server's lock, and the answer and the
// count follow that one reading, so a revocation racing with the request
// cannot give a 401 it never counted. An accepted request gets the server's
// answer without its Idempotency-Key: the hook has already decided that
// key's fate, and remembered answers would grow the heap the test watches.
type soakFaults struct {
	s         *FakeServer
	mu        sync.Mutex
	rnd       *mrand.Rand
	keys      map[string]*soakKey
	permanent int // calls failed by design: every attempt 503
	twice401  int // calls failed by design: 401 on the attempt and the replay
}

type soakKey struct {
	seen      time.Time // the last attempt
	n503      int
	n401      int
	permanent bool
}

func (f *soakFaults) hook(w http.ResponseWriter, r *http.Request) bool {
	if !strings.HasPrefix(r.URL.Path, "/api/") || strings.HasPrefix(r.URL.Path, "/api/auth/") {
		return false
	}
	id := r.Header.Get("Idempotency-Key")
	tok, bearer := fakeBearer(r.Header.Get("Authorization"))

	f.mu.Lock()
	k := f.keys[id]
	if k == nil {
		if len(f.keys) > 2000 { // forget calls long finished: memory stays flat
			for id, old := range f.keys {
				if time.Since(old.seen) > 10*time.Second {
					delete(f.keys, id)
				}
			}
		}
		k = &soakKey{permanent: f.rnd.Intn(500) == 0}
		f.keys[id] = k
	}
	k.seen = time.Now() // a call in progress is never forgotten
	var status int
	switch {
	case k.permanent:
		k.n503++
		if k.n503 == 3 {
			f.permanent++
		}
		status = http.StatusServiceUnavailable
	case k.n503 < 2 && f.rnd.Intn(20) == 0:
		k.n503++
		status = http.StatusServiceUnavailable
	default:
		f.s.mu.Lock()
		accepted := bearer && f.s.validLocked(tok, false)
		f.s.mu.Unlock()
		if !accepted {
			if k.n401++; k.n401 == 2 {
				f.twice401++
			}
			status = http.StatusUnauthorized
		}
	}
	f.mu.Unlock()

	switch status {
	case http.StatusServiceUnavailable:
		writeJSON(w, status, map[string]string{"error": "injected"})
	case http.StatusUnauthorized:
		writeJSON(w, status, map[string]any{"errors": map[string]string{"detail": "Unauthorized"}})
	default: // accepted: answered without the server checking the token again
		body, _ := io.ReadAll(r.Body)
		f.s.serveAPI(w, r.URL.Path, "", body)
	}
	return true
}

// TestSoak drives 64 goroutines for 20s through authentication,
// stale-window refreshes of 2-second tokens, random 503s and revocations.
// Every failed call must be one the server failed by design, the token
// requests stay within the refresh schedule, and memory stays flat.
func TestSoak(t *testing.T) {
	ctx := context.Background()
	if testing.Short() {
		t.Skip("soak test: runs without -short (CI runs it)")
	}
	const (
		workers     = 64
		duration    = 20 * time.Second
		lifetime    = 2 * time.Second
		revokeEvery = 1500 * time.Millisecond
	)
	s := startServer(t)
	// 2-second tokens for the client, and only for it: the server goes on
	// accepting them until they are revoked, as a request held up on a busy
	// machine past a token's expiry would add token requests the schedule
	// below does not count.
	s.setKnobs(func() { s.expiresIn = int(lifetime / time.Second) })
	faults := &soakFaults{s: s.FakeServer, rnd: mrand.New(mrand.NewSource(1)), keys: map[string]*soakKey{}}
	s.setHook(faults.hook)
	c := newTestClient(t, WithBaseURL(s.URL))

	stop := make(chan struct{})
	var (
		wg               sync.WaitGroup
		calls, failed    atomic.Int64
		unexpected       atomic.Value
		revocations      int
		heap5, heapFinal uint64
	)
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				if i%4 == 0 {
					_, err = c.OptimizeMessage(ctx, MessageRequest{CustomerID: customerID, Candidate: Message{Content: "Your payment is due."}})
				} else {
					// ProcessMessage, not SubmitFeedback: the server keeps
					// every feedback entry, and the heap must stay flat.
					_, err = c.ProcessMessage(ctx, MessageRequest{CustomerID: customerID,
						Candidate: Message{Content: "Your payment is due.", Channel: ChannelSMS, MessageID: fmt.Sprintf("m-%d-%d", g, i)}})
				}
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					if !errors.Is(err, ErrServer) && !errors.Is(err, ErrUnauthorized) {
						unexpected.Store(err.Error())
					}
				}
			}
		}(g)
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	start := time.Now()
	tick := time.NewTicker(revokeEvery)
	defer tick.Stop()
	for time.Since(start) < duration {
		<-tick.C
		s.revokeAccess() // the refresh tokens kept: no refresh is refused here
		revocations++
		if heap5 == 0 && time.Since(start) >= 5*time.Second {
			heap5 = heap()
		}
	}
	heapFinal = heap()
	close(stop)
	wg.Wait()
	elapsed := time.Since(start) // the run's real length, which a busy machine stretches

	faults.mu.Lock()
	byDesign := int64(faults.permanent + faults.twice401)
	permanent, twice := faults.permanent, faults.twice401
	faults.mu.Unlock()
	refreshes, exchanges := s.Requests(pathRefresh), s.Requests(pathToken)
	t.Logf("%d calls, %d failed (%d permanent 503s, %d revoked twice), %d refreshes, %d API-key exchanges, %d revocations, heap %d KiB at 5s, %d KiB at 20s",
		calls.Load(), failed.Load(), permanent, twice, refreshes, exchanges, revocations, heap5>>10, heapFinal>>10)

	if v := unexpected.Load(); v != nil {
		t.Errorf("a call failed with an unexpected error: %v", v)
	}
	if failed.Load() != byDesign {
		t.Errorf("failed calls = %d; want %d, the ones the server failed by design", failed.Load(), byDesign)
	}
	if exchanges != 1 {
		t.Errorf("API-key exchanges = %d; want 1 (refreshes are never refused here)", exchanges)
	}
	// One refresh per half lifetime (the capped margin) of the run's real
	// length, one per revocation, and slack for the one in flight at each
	// end; at least one per lifetime of the nominal length.
	if maxRefresh := int(elapsed/(lifetime/2)) + revocations + 2; refreshes > maxRefresh || refreshes < int(duration/lifetime) {
		t.Errorf("refreshes = %d; want between %d and %d", refreshes, int(duration/lifetime), maxRefresh)
	}
	if heapFinal > heap5+4<<20 {
		t.Errorf("heap grew from %d KiB at 5s to %d KiB at 20s; want flat (within 4 MiB)", heap5>>10, heapFinal>>10)
	}
}

// ---- benchmarks ----

// BenchmarkAccessToken measures the fresh-token path: one atomic load and a
// monotonic clock read.
func BenchmarkAccessToken(b *testing.B) {
	s, c := setup(b)
	access, refresh := s.grant()
	holdToken(c, access, refresh, 3600, 0)
	benchTokenReads(b, c)
	// The clock read alone, for scale: the rest of the fresh path is one
	// atomic load and two comparisons.
	b.Run("clock-only", func(b *testing.B) {
		var sink time.Duration
		for i := 0; i < b.N; i++ {
			sink += c.mono()
		}
		_ = sink
	})
}

// BenchmarkAccessTokenStale measures the stale path: the token is inside the
// refresh margin and a background refresh is in flight (held by the server).
func BenchmarkAccessTokenStale(b *testing.B) {
	ctx := context.Background()
	s, c := setup(b)
	s.hold(b, pathRefresh) // released when the benchmark ends, before the server closes
	// A 2-minute token sent 65s ago on the real clock: past its stale
	// point (60s: the margin capped at half the lifetime), 45s before its
	// leeway. The first call starts the refresh, which the server holds.
	holdToken(c, "a.b.c", "r", 120, 65*time.Second)
	if _, err := c.AccessToken(ctx); err != nil {
		b.Fatal(err)
	}
	if c.flight.Load() == nil {
		b.Fatal("no background refresh in flight")
	}
	benchTokenReads(b, c)
}

// benchEcho is a loopback server for round-trip benchmarks: it answers every
// POST with a fixed feedback entry, so that the client's cost dominates.
func benchEcho(b *testing.B) *httptest.Server {
	b.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(benchReply)
	}))
	b.Cleanup(srv.Close)
	return srv
}

// BenchmarkDo compares a Do round trip with the same round trip written by
// hand with net/http and encoding/json: over loopback TCP (what a caller
// sees) and through an in-memory transport (the client's own cost, free of
// the network's noise).
func BenchmarkDo(b *testing.B) {
	ctx := context.Background()
	srv := benchEcho(b)
	in := benchFeedback{MessageID: "m1", CustomerResponded: true, Score: "good"}
	loopback := func() *http.Client {
		t := http.DefaultTransport.(*http.Transport).Clone()
		b.Cleanup(t.CloseIdleConnections)
		return &http.Client{Transport: t}
	}
	inMemory := func() *http.Client {
		return &http.Client{Transport: &cannedTransport{header: jsonHeader, body: benchReply}}
	}
	for _, tr := range []struct {
		name string
		hc   func() *http.Client
	}{{"loopback", loopback}, {"inmemory", inMemory}} {
		b.Run(tr.name+"/apala", func(b *testing.B) {
			c := newTestClient(b, WithBaseURL(srv.URL), WithHTTPClient(tr.hc()))
			holdToken(c, "a.b.c", "r", 3600, 0) // calls measured, not authentication
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var out fakeFeedbackOut
				if err := c.Do(ctx, "POST", "/api/feedback", &in, &out); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tr.name+"/baseline", func(b *testing.B) {
			hc := tr.hc()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				body, err := json.Marshal(&in)
				if err != nil {
					b.Fatal(err)
				}
				var out fakeFeedbackOut
				handPost(b, hc, srv.URL+"/api/feedback", body, &out)
			}
		})
	}
}

// BenchmarkDoObserved is BenchmarkDo in memory with WithResponseInfo and a
// no-op Attempt hook: what observing a call costs.
func BenchmarkDoObserved(b *testing.B) {
	ctx := context.Background()
	in := benchFeedback{MessageID: "m1", CustomerResponded: true, Score: "good"}
	hc := &http.Client{Transport: &cannedTransport{header: jsonHeader, body: benchReply}}
	c := newTestClient(b, WithHTTPClient(hc), WithHooks(Hooks{Attempt: func(context.Context, AttemptInfo) {}}))
	holdToken(c, "a.b.c", "r", 3600, 0)
	var info ResponseInfo
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var out fakeFeedbackOut
		if err := c.Do(ctx, "POST", "/api/feedback", &in, &out, WithResponseInfo(&info)); err != nil {
			b.Fatal(err)
		}
	}
}

// optimizeReply is an optimizer answer, for BenchmarkOptimizeMessage.
var optimizeReply = []byte(`{"message_id":"msg-0001","optimized_message":"Your payment is due on Friday - reply YES and we will call you today.","recommended_channel":"SMS","original_message":"Your payment is due on Friday."}`)

// BenchmarkOptimizeMessage compares OptimizeMessage, validation included,
// with a hand-written client doing the same marshalling (a three-message
// conversation, flat metadata, string reply_or_not, RFC 3339 times), the
// same headers and the same decoding, through an in-memory transport.
func BenchmarkOptimizeMessage(b *testing.B) {
	ctx := context.Background()
	t0 := time.Date(2025, 1, 15, 10, 30, 0, 0, time.UTC)
	req := MessageRequest{
		CustomerID: customerID,
		Messages: []Message{
			{Content: "Hi, is my loan approved?", Channel: ChannelSMS, MessageID: "m-1", SendTimestamp: t0, ReplyOrNot: true},
			{Content: "We are reviewing your application.", Channel: ChannelSMS, MessageID: "m-2", SendTimestamp: t0},
			{Content: "Thanks, let me know.", Channel: ChannelSMS, MessageID: "m-3", SendTimestamp: t0, ReplyOrNot: true},
		},
		Candidate: Message{Content: "Your payment is due on Friday."},
		Metadata:  &CustomerMetadata{StateID: intp(5), CreditScoreBin: CreditScore650To700, AgeBin: Age25To30},
	}
	hc := &http.Client{Transport: &cannedTransport{header: jsonHeader, body: optimizeReply}}
	b.Run("apala", func(b *testing.B) {
		c := newTestClient(b, WithHTTPClient(hc))
		holdToken(c, "a.b.c", "r", 3600, 0)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.OptimizeMessage(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline", func(b *testing.B) {
		type msg struct {
			Content       string `json:"content"`
			Channel       string `json:"channel"`
			MessageID     string `json:"message_id"`
			SendTimestamp string `json:"send_timestamp"`
			ReplyOrNot    string `json:"reply_or_not"`
		}
		type body struct {
			Company          string `json:"company"`
			CustomerID       string `json:"customer_id"`
			Messages         []msg  `json:"messages"`
			CandidateMessage string `json:"candidate_message"`
			StateID          *int   `json:"state_id,omitempty"`
			CreditScoreBin   string `json:"credit_score_bin,omitempty"`
			AgeBin           string `json:"age_bin,omitempty"`
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			in := body{Company: FakeCompanyGUID, CustomerID: req.CustomerID, CandidateMessage: req.Candidate.Content,
				StateID: req.Metadata.StateID, CreditScoreBin: string(req.Metadata.CreditScoreBin), AgeBin: string(req.Metadata.AgeBin)}
			in.Messages = make([]msg, len(req.Messages))
			for j, m := range req.Messages {
				in.Messages[j] = msg{m.Content, string(m.Channel), m.MessageID, m.SendTimestamp.Format(time.RFC3339), strconv.FormatBool(m.ReplyOrNot)}
			}
			data, err := json.Marshal(&in)
			if err != nil {
				b.Fatal(err)
			}
			var out OptimizationResponse
			handPost(b, hc, "http://localhost:4000/api/message_optimizer", data, &out)
		}
	})
}

// ---- what a fresh review found ----

// TestDecodeErrorsScrubbed: encoding/json quotes the server's text in its
// errors (a map key, a ,string value); the client's error does not carry a
// secret from it.
func TestDecodeErrorsScrubbed(t *testing.T) {
	ctx := context.Background()
	s, c := setup(t)
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasPrefix(r.URL.Path, "/api/echo") {
			return false
		}
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"`+tok+`":1,"n":"`+tok+`"}`)
		return true
	})
	var m map[int]int
	err := c.Do(ctx, "POST", "/api/echo", nil, &m)
	var n struct {
		N int `json:"n,string"`
	}
	err2 := c.Do(ctx, "POST", "/api/echo2", nil, &n)
	for _, e := range []error{err, err2} {
		if e == nil || !strings.Contains(e.Error(), "malformed JSON response") {
			t.Fatalf("error = %v; want a malformed JSON response", e != nil)
		}
		noSecret(t, "decode error", fmt.Sprintf("%v %+v", e, e))
	}
}

// TestConnectionErrorScrubbed: net/http quotes a malformed answer in its
// error; a server that echoes the API key there cannot get it into the
// error, the cooldown's copy of it, or the log.
func TestConnectionErrorScrubbed(t *testing.T) {
	ctx := context.Background()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func(conn net.Conn) {
				defer conn.Close()
				req, err := http.ReadRequest(bufio.NewReader(conn))
				if err != nil {
					return
				}
				var in struct {
					APIKey string `json:"api_key"`
				}
				_ = json.NewDecoder(req.Body).Decode(&in)
				_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\njunk "+in.APIKey+"\r\n\r\n")
			}(conn)
		}
	}()
	var logs logBuffer
	c := newTestClient(t, WithBaseURL("http://"+ln.Addr().String()), WithMaxRetries(0), WithLogger(newJSONLogger(&logs)))
	for i := 0; i < 2; i++ { // the answer, then the cooldown's copy
		_, err = c.AccessToken(ctx)
		var ue *url.Error
		if !errors.Is(err, ErrConnection) || !errors.As(err, &ue) {
			t.Fatalf("AccessToken() error = %v; want ErrConnection with a *url.Error", err != nil)
		}
		noSecret(t, "connection error", err.Error())
	}
	noSecret(t, "log output", logs.String())
}

// TestResponseInfoPrintsHeaderNames: ResponseInfo keeps the answer's header
// for the program to read, and prints, logs and encodes only its names.
func TestResponseInfoPrintsHeaderNames(t *testing.T) {
	info := ResponseInfo{StatusCode: 200, Header: http.Header{"X-Echo": {"tok-SECRET-1"}, "Content-Type": {"application/json"}}, RequestID: "req-0001", Attempts: 1}
	var b bytes.Buffer
	slog.New(slog.NewJSONHandler(&b, nil)).Info("call", slog.Any("info", info), slog.Any("all", []ResponseInfo{info}))
	js, _ := json.Marshal(map[string]ResponseInfo{"i": info})
	for what, out := range map[string]string{"fmt": fmt.Sprintf("%v %+v %#v", info, info, &info), "slog": b.String(), "json": string(js)} {
		noSecret(t, what, out)
		if !strings.Contains(out, "X-Echo") || !strings.Contains(out, "req-0001") {
			t.Errorf("%s output does not name the header and the request id", what)
		}
	}
	if info.Header.Get("X-Echo") != "tok-SECRET-1" {
		t.Errorf("the header's value was changed for the program")
	}
}

// TestScrubbedErrorStaysPermanent: a certificate error whose text quoted a
// secret is rebuilt scrubbed, and is still not retried.
func TestScrubbedErrorStaysPermanent(t *testing.T) {
	_, c := setup(t)
	err := &url.Error{Op: "Post", URL: "https://x/api", Err: &tls.CertificateVerificationError{Err: errors.New("x509: certificate is valid for " + FakeAPIKey + ".example")}}
	got := c.scrubErr(err, nil)
	noSecret(t, "scrubbed error", got.Error())
	if !permanent(got) || retryable(0, fmt.Errorf("%w: %w", ErrConnection, got)) {
		t.Errorf("the scrubbed certificate error would be retried")
	}
}

// TestResponseInfoEmptiedWhenRefused: a call refused before sending leaves
// no earlier call's details in its ResponseInfo.
func TestResponseInfoEmptiedWhenRefused(t *testing.T) {
	_, c := setup(t)
	var info ResponseInfo
	ctx := context.Background()
	if _, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}, WithResponseInfo(&info)); err != nil || info.StatusCode != 200 {
		t.Fatalf("first call: %v, %+v", err, info)
	}
	for name, call := range map[string]func() error{
		"bad input": func() error {
			_, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: "excellent"}, WithResponseInfo(&info))
			return err
		},
		"bad option": func() error {
			_, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}, WithTimeout(-1), WithResponseInfo(&info))
			return err
		},
	} {
		info.StatusCode = 200
		if err := call(); err == nil || info.StatusCode != 0 || info.RequestID != "" || info.Attempts != 0 {
			t.Errorf("%s: error %v, info %+v; want an error and an empty ResponseInfo", name, err, info)
		}
	}
}

// BenchmarkAuthenticate measures an API-key exchange through the in-memory
// FakeServer: the request, the answer's decoding and the new pair.
func BenchmarkAuthenticate(b *testing.B) {
	ctx := context.Background()
	s := NewFakeServer()
	c, err := s.NewClient()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Authenticate(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// ---- the retry budget ----

// statusTransport answers every attempt with the status next gives it
// (under its lock), and counts the attempts.
type statusTransport struct {
	mu       sync.Mutex
	next     func() int
	attempts int
}

func (t *statusTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	t.mu.Lock()
	t.attempts++
	status := t.next()
	t.mu.Unlock()
	body := `{"error":"down"}`
	if status == 200 && strings.HasPrefix(r.URL.Path, "/api/auth/") {
		body = `{"access_token":"n.e.w","expires_in":3600}`
	}
	return &http.Response{StatusCode: status, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(body)), Request: r}, nil
}

func (t *statusTransport) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.attempts
}

// budgetClient returns a client over t with the default retries, a short
// backoff, and a token held, so that only the calls' attempts are counted.
func budgetClient(tb testing.TB, t *statusTransport, opts ...ClientOption) *Client {
	c := newTestClient(tb, append([]ClientOption{WithHTTPClient(&http.Client{Transport: t}),
		WithRetryBackoff(time.Nanosecond, time.Nanosecond)}, opts...)...)
	holdToken(c, "a.b.c", "r", 3600, 0)
	return c
}

// callMany makes n calls from g goroutines and returns how many succeeded.
func callMany(c *Client, n, g int) int {
	var ok atomic.Int64
	var wg sync.WaitGroup
	per := n / g
	for i := 0; i < g; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < per; j++ {
				if c.Do(context.Background(), "POST", "/api/feedback", nil, nil) == nil {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return int(ok.Load())
}

// TestRetryBudget counts attempts: an outage costs at most 100 retries
// (1,000 calls, every attempt 503: at most 1,100 attempts, where retries
// without a budget made 3,000); a random 10% of failed attempts is retried
// enough for 99.5% of calls to succeed; after an outage a failure is
// retried again within 100 successful calls. The same with 64 goroutines.
func TestRetryBudget(t *testing.T) {
	for _, g := range []int{1, 64} {
		t.Run(fmt.Sprintf("outage/%d goroutines", g), func(t *testing.T) {
			tr := &statusTransport{next: func() int { return 503 }}
			c := budgetClient(t, tr)
			if ok := callMany(c, 1024, g); ok != 0 {
				t.Fatalf("%d calls succeeded; want 0", ok)
			}
			if n := tr.count(); n > 1124 {
				t.Errorf("outage: %d attempts for 1,024 calls; want at most 1,124 (100 retries)", n)
			}
		})
		t.Run(fmt.Sprintf("noise/%d goroutines", g), func(t *testing.T) {
			rnd := mrand.New(mrand.NewSource(17))
			tr := &statusTransport{next: func() int {
				if rnd.Intn(10) == 0 {
					return 503
				}
				return 200
			}}
			c := budgetClient(t, tr)
			if ok := callMany(c, 9984, g); ok < 9984*995/1000 {
				t.Errorf("noise: %d of 9,984 calls succeeded; want at least 99.5%%", ok)
			}
		})
		t.Run(fmt.Sprintf("recovery/%d goroutines", g), func(t *testing.T) {
			var down atomic.Bool
			down.Store(true)
			tr := &statusTransport{next: func() int {
				if down.Load() {
					return 503
				}
				return 200
			}}
			c := budgetClient(t, tr)
			callMany(c, 1024, g) // spends the budget
			down.Store(false)
			for i := 1; ; i++ {
				callMany(c, g, g) // g successes
				down.Store(true)
				before := tr.count()
				err := c.Do(context.Background(), "POST", "/api/feedback", nil, nil)
				down.Store(false)
				if !errors.Is(err, ErrServer) {
					t.Fatalf("error = %v; want ErrServer", err)
				}
				if tr.count()-before > 1 {
					break // retried
				}
				if i*g > 100 {
					t.Fatalf("no retry after %d successful calls; want one within 100", i*g)
				}
			}
		})
	}
}

// TestRetryBudgetSpent: a failure returned because the budget is spent
// still matches what it matched, says so, reports RetryIn 0 to the hook and
// logs at Warn why no retry followed; the 401 replay is not limited, and
// WithMaxRetries(0) still turns retries off without spending anything.
func TestRetryBudgetSpent(t *testing.T) {
	tr := &statusTransport{next: func() int { return 503 }}
	var logs logBuffer
	var mu sync.Mutex
	var last AttemptInfo
	c := budgetClient(t, tr, WithLogger(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))),
		WithHooks(Hooks{Attempt: func(_ context.Context, a AttemptInfo) { mu.Lock(); last = a; mu.Unlock() }}))
	callMany(c, 100, 1) // spends the budget: 50 calls of 3 attempts
	before := tr.count()
	err := c.Do(context.Background(), "POST", "/api/feedback?k=v", nil, nil)
	var ae *APIError
	if !errors.Is(err, ErrServer) || !errors.As(err, &ae) || !strings.Contains(err.Error(), "retry budget is spent") {
		t.Errorf("error = %v; want an ErrServer *APIError saying the retry budget is spent", err)
	}
	if n := tr.count() - before; n != 1 {
		t.Errorf("attempts with the budget spent = %d; want 1", n)
	}
	mu.Lock()
	if last.RetryIn != 0 || last.StatusCode != 503 || last.Path != "/api/feedback" {
		t.Errorf("Attempt report = %+v; want 503 on /api/feedback, RetryIn 0", last)
	}
	mu.Unlock()
	found := false
	for _, r := range logs.records(t) {
		found = found || (r["msg"] == "apala: not retrying" && r["why"] == "the retry budget is spent")
	}
	if !found {
		t.Errorf("no Warn record says the retry budget is spent:\n%s", logs.String())
	}
	// The 401 replay is not a retry: it happens with the budget spent.
	n401 := 0
	tr.mu.Lock()
	tr.next = func() int {
		if n401++; n401 == 1 {
			return 401
		}
		return 200
	}
	tr.mu.Unlock()
	before = tr.count()
	if err := c.Do(context.Background(), "POST", "/api/feedback", nil, nil); err != nil || tr.count()-before != 3 {
		t.Errorf("401 with the budget spent: error %v, attempts %d; want nil, 3 (the call, a token, the replay)", err, tr.count()-before)
	}
	// Retries off: one attempt, nothing spent.
	c2 := budgetClient(t, tr, WithMaxRetries(0))
	tr.mu.Lock()
	tr.next = func() int { return 503 }
	tr.mu.Unlock()
	callMany(c2, 10, 1)
	if got := c2.budget.spent.Load(); got != 0 {
		t.Errorf("budget spent with WithMaxRetries(0) = %d; want 0", got)
	}
}

// TestHTTPClientSendsClientHeaders: a client's WithHeader goes on
// HTTPClient's requests to the base origin, unless the request sets that
// header itself, and never to another origin.
func TestHTTPClientSendsClientHeaders(t *testing.T) {
	got := make(chan http.Header, 3)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == pathToken {
			writeJSON(w, 200, map[string]any{"access_token": "a.b.c", "expires_in": 3600})
			return
		}
		got <- r.Header.Clone()
	}))
	defer srv.Close()
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got <- r.Header.Clone() }))
	defer other.Close()
	c := newTestClient(t, WithBaseURL(srv.URL), WithHeader("X-Gateway-Key", "gw"))
	hc := c.HTTPClient()
	for _, tt := range []struct {
		url, own, want string
	}{{srv.URL + "/x", "", "gw"}, {srv.URL + "/x", "mine", "mine"}, {other.URL + "/x", "", ""}} {
		req, _ := http.NewRequest("GET", tt.url, nil)
		if tt.own != "" {
			req.Header.Set("X-Gateway-Key", tt.own)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if h := recv(t, got, "got"); h.Get("X-Gateway-Key") != tt.want {
			t.Errorf("%s with %q: X-Gateway-Key = %q; want %q", tt.url, tt.own, h.Get("X-Gateway-Key"), tt.want)
		}
	}
}

// TestPathWithoutQuery: the query of Do's path reaches the server, and
// never an error, a log record or a hook: metrics labels stay few, and a
// secret put in a query stays out of logs.
func TestPathWithoutQuery(t *testing.T) {
	var logs logBuffer
	var paths []string
	var mu sync.Mutex
	s, c := setup(t, WithMaxRetries(0), WithLogger(newJSONLogger(&logs)),
		WithHooks(Hooks{Attempt: func(_ context.Context, a AttemptInfo) { mu.Lock(); paths = append(paths, a.Path); mu.Unlock() }}))
	s.Fail(pathFeedback, 503, "down")
	err := c.Do(context.Background(), "POST", pathFeedback+"?token=q-SECRET-1", map[string]any{}, nil)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Path != pathFeedback {
		t.Fatalf("error = %v; want an *APIError with Path %s", err, pathFeedback)
	}
	waitIdle(t, c)
	mu.Lock()
	defer mu.Unlock()
	for _, p := range paths {
		if strings.Contains(p, "?") {
			t.Errorf("hook path %q carries the query", p)
		}
	}
	for what, text := range map[string]string{"error": err.Error(), "log": logs.String()} {
		if strings.Contains(text, "q-SECRET") {
			t.Errorf("%s carries the query: %s", what, text)
		}
	}
	if got := s.lastHeader(pathFeedback); got == nil {
		t.Errorf("the request did not reach the server")
	}
	// A connection error: net/http quotes the URL, query included.
	dead := newTestClient(t, WithBaseURL("http://"+deadAddr(t)), WithMaxRetries(0))
	holdToken(dead, "a.b.c", "r", 3600, 0)
	if err := dead.Do(context.Background(), "GET", "/api/x?token=q-SECRET-2", nil, nil); !errors.Is(err, ErrConnection) || strings.Contains(err.Error(), "q-SECRET") {
		t.Errorf("connection error = %v; want ErrConnection without the query", err)
	}
}

// TestResponseInfoKeepsLastAnswer: when a later attempt got no answer,
// ResponseInfo keeps the status, header and request id of the last one
// that came, and counts every attempt.
func TestResponseInfoKeepsLastAnswer(t *testing.T) {
	n := 0
	hc := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if n++; n == 1 {
			return &http.Response{StatusCode: 503, Header: http.Header{"X-Request-Id": {"req-first"}},
				Body: io.NopCloser(strings.NewReader(`{"error":"busy"}`)), Request: r}, nil
		}
		return nil, errors.New("connection reset")
	})}
	c := newTestClient(t, WithHTTPClient(hc), WithMaxRetries(1))
	holdToken(c, "a.b.c", "r", 3600, 0)
	var info ResponseInfo
	err := c.Do(context.Background(), "POST", pathFeedback, nil, nil, WithResponseInfo(&info))
	if !errors.Is(err, ErrConnection) {
		t.Fatalf("error = %v; want ErrConnection", err)
	}
	if info.StatusCode != 503 || info.RequestID != "req-first" || info.Header.Get("X-Request-Id") != "req-first" || info.Attempts != 2 {
		t.Errorf("ResponseInfo = %+v; want the 503's status, header and request id, 2 attempts", info)
	}
}

// TestStatusEdges pins each boundary the code draws on a status: success
// is 200 to 299; ErrServer is 500 to 599; retried are exactly 408, 429,
// 500, 502, 503 and 504.
func TestStatusEdges(t *testing.T) {
	for _, tt := range []struct {
		status          int
		ok, server, try bool
	}{
		{199, false, false, false}, {200, true, false, false}, {299, true, false, false}, {300, false, false, false},
		{407, false, false, false}, {408, false, false, true}, {409, false, false, false},
		{428, false, false, false}, {429, false, false, true}, {430, false, false, false},
		{499, false, false, false}, {500, false, true, true}, {501, false, true, false},
		{502, false, true, true}, {503, false, true, true}, {504, false, true, true}, {505, false, true, false},
		{599, false, true, false}, {600, false, false, false},
	} {
		r := response{status: tt.status}
		e := &APIError{StatusCode: tt.status}
		if r.ok() != tt.ok || errors.Is(e, ErrServer) != tt.server || retryable(tt.status, e) != tt.try {
			t.Errorf("status %d: ok %v, ErrServer %v, retried %v; want %v, %v, %v",
				tt.status, r.ok(), errors.Is(e, ErrServer), retryable(tt.status, e), tt.ok, tt.server, tt.try)
		}
	}
}

// TestNilClientPrints: a nil *Client prints as <nil>, without a panic.
func TestNilClientPrints(t *testing.T) {
	var c *Client
	if got := fmt.Sprintf("%v %+v", c, c); got != "<nil> <nil>" {
		t.Errorf("nil *Client printed %q; want <nil> <nil>", got)
	}
}
