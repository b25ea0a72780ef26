package apala

// This file holds FakeServer, an in-memory Apala API shipped with the package
// so that users test their own code against the real client, the way
// net/http/httptest serves net/http. It speaks the wire protocol strictly and
// judges requests with wire types of its own, never the client's, so that it
// stays an independent check of what the client sends. The client it serves
// is in apala.go and auth.go.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Credentials of every FakeServer.
const (
	// FakeAPIKey is the one API key a FakeServer accepts. Like every token
	// the server issues, it contains the word SECRET, so that a test can
	// check its output for leaked secrets by searching for that one word.
	FakeAPIKey = "fake-SECRET-api-key"

	// FakeCompanyGUID is the company a FakeServer's tokens belong to: its
	// token answers carry it as company_id, and a message request must
	// name it as company.
	FakeCompanyGUID = "550e8400-e29b-41d4-a716-446655440000"
)

// Only string constants at package level: the DWARF data of a program lists
// every integer constant of the packages it imports, and a program that does
// not use FakeServer should not grow by them.
const (
	fakeCompanyName = "Acme Lending"

	fakePathToken      = "/api/auth/token"
	fakePathRefresh    = "/api/auth/refresh"
	fakePathProcessing = "/api/message_processing"
	fakePathOptimizer  = "/api/message_optimizer"
	fakePathFeedback   = "/api/feedback"
	fakePathBulk       = "/api/feedback/bulk"

	fakeJWTHeader      = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9" // {"alg":"HS256","typ":"JWT"}
	fakeJSONType       = "application/json; charset=utf-8"
	fakeUnauthorized   = `{"errors":{"detail":"Unauthorized"}}` // Phoenix's answer to a bad bearer token
	fakeOptimizeSuffix = " - reply YES and we will call you today."

	// Allowed values, as the wire protocol lists them, separated by ", ".
	fakeChannels     = "SMS, EMAIL, OTHER"
	fakeScores       = "good, bad, neutral"
	fakeRewards      = "updating_account_number, sending_pdf_bank_statements, linking_chirp, signing_loan_agreement"
	fakeCreditScores = "SCORE_500_550, SCORE_550_600, SCORE_600_650, SCORE_650_700, SCORE_700_750, SCORE_750_800, SCORE_800_PLUS, UNKNOWN"
	fakeLoanAmounts  = "AMOUNT_0_500, AMOUNT_500_1000, AMOUNT_1000_2000, AMOUNT_2000_5000, AMOUNT_5000_10000, AMOUNT_10000_PLUS"
	fakeAges         = "AGE_18_25, AGE_25_30, AGE_30_35, AGE_35_40, AGE_40_45, AGE_45_50, AGE_50_55, AGE_55_60, AGE_60_PLUS"
	fakeIncomes      = "INCOME_0_2000, INCOME_2000_3000, INCOME_3000_4000, INCOME_4000_5000, INCOME_5000_6000, INCOME_6000_8000, INCOME_8000_10000, INCOME_10000_PLUS"
	fakeReasons      = "DEBT_CONSOLIDATION, HOME_IMPROVEMENT, MEDICAL_EMERGENCY, CAR_REPAIR, MOVING_EXPENSES, EDUCATION, BUSINESS_EXPENSES, EMERGENCY_EXPENSES, VACATION, WEDDING, OTHER"
)

// FakeServer is an in-memory Apala API for testing code that uses this
// package, as net/http/httptest is for code that uses net/http. Most tests
// want NewClient, which returns a *Client wired to the server in memory:
//
//	srv := apala.NewFakeServer()
//	c, err := srv.NewClient()
//	if err != nil { ... }
//	defer c.Close()
//	res, err := c.OptimizeMessage(ctx, req) // res.MessageID is "msg-0001"
//
// For a real socket, mount the server on httptest.NewServer(srv) and give
// NewClient (the package's) FakeAPIKey, WithBaseURL and
// WithCompanyGUID(FakeCompanyGUID).
//
// # What it refuses
//
// The server is strict like the real one. Every endpoint takes only POST
// (405 otherwise) with a JSON body (415 otherwise) of at most 1 MiB (413
// otherwise) holding exactly one object without unknown fields; unknown
// paths get 404. The message endpoints want company (FakeCompanyGUID, 403
// for another UUID), customer_id (a UUID), messages (a list, possibly
// empty), an optional 5-digit zip_code, and messages with non-empty
// content, a channel of SMS, EMAIL or OTHER, a message_id, reply_or_not as
// the string "true" or "false" (not a JSON boolean) and send_timestamp in
// RFC 3339 with Z or an offset. The optimizer takes candidate_message as a
// string and the metadata fields flat beside it (is_repeat_borrower 0 or 1,
// state_id 1 or more, bins from their sets); message_processing takes it as
// a message. Feedback wants message_id, customer_responded (a JSON
// boolean), a score of good, bad or neutral, rewards from their set and ISO
// 8601 times; a bulk request a non-empty list of such items. Bad input gets
// 422 and {"error": "..."} naming the field.
//
// The token endpoint takes exactly {"api_key": ...}, the refresh endpoint
// exactly {"refresh_token": ...}, neither with an Authorization header (400
// otherwise); a key other than FakeAPIKey, or a refresh token unknown,
// expired or revoked, gets 401. The tokens are JWT-shaped, with iat and exp
// claims. The API endpoints answer 401 and {"errors": {"detail":
// "Unauthorized"}}, as Phoenix does, to a missing, unknown, expired or
// revoked bearer token, before they look at the body. Access tokens live an
// hour (SetTokenLifetime), refresh tokens a week. A refresh keeps the
// refresh token unless RotateRefreshTokens is on.
//
// # Its clock
//
// The server has a clock of its own: Now starts at 2025-01-15T10:00:00Z
// and moves only by Advance. Token lifetimes, the tokens' claims and the
// inserted_at of feedback are on this clock, so answers are the same on
// every run, and a test of token expiry never sleeps: the clients that
// NewClient makes judge their tokens by the same clock (their waits, such
// as retry backoff, stay on real time). A client made otherwise, over a
// socket, judges by real time, like a client of a real server: after an
// Advance past its token's lifetime, the token is refused with 401 and the
// client recovers as it would in production.
//
// # Answers
//
// Its answers are deterministic: every answer carries an X-Request-Id,
// "req-0001", "req-0002", ... in the order requests arrive (as Phoenix's
// Plug.RequestId sends one); the optimizer's message ids are "msg-0001",
// "msg-0002", ... and feedback ids "fb-0001", ..., in the order the requests
// arrive; an optimized message is the candidate, trimmed and without a final
// period, followed by " - reply YES and we will call you today.". A
// request whose Idempotency-Key the server has already answered on that
// path gets the first answer again and changes nothing; only successful
// answers are remembered (the last 4096 at least), and the key is not
// required.
//
// Respond and Fail script answers (an outage, a rate limit, a slow answer)
// that come before every check. Received returns what clients sent, for a
// test to assert on; Requests counts it. Use one server per test: it keeps
// every feedback entry.
//
// The zero value is a server ready to use, like one from NewFakeServer. A
// FakeServer is safe for concurrent use by multiple goroutines.
type FakeServer struct {
	// clock is how far Advance has moved the server's clock, in
	// nanoseconds: read without a lock, as clients read it on every call.
	clock atomic.Int64

	// mu guards every field below. ServeHTTP holds it only to read and
	// update them, never while it decodes a body, waits, runs the hook or
	// writes an answer.
	mu     sync.Mutex
	inited bool // the defaults and maps are set

	lifetime time.Duration // of access tokens issued from now on
	rotate   bool          // answer a refresh with a new refresh token and revoke the old one

	// Knobs no user needs, for the package's own tests of the client (set
	// with mu held: the tests' setKnobs does; hook with setHook).
	expiresIn int                                               // expires_in of auth answers, sent as is even when it disagrees with lifetime: tests of odd answers; SetTokenLifetime sets it
	noExpiry  bool                                              // leave expires_in out: tests of the client's fall-back to the JWT's exp
	apiKey    string                                            // the one key accepted, "" for FakeAPIKey: tests of WithAPIKeyFunc need old and new keys told apart (users refuse a key with Respond)
	hook      func(w http.ResponseWriter, r *http.Request) bool // answers computed from the request (a token echoed, the client called mid-request, a panic): see setHook
	hooked    atomic.Bool                                       // hook is set: read by the in-memory transport without the lock

	requests  int                  // requests received, on every path: n of the last X-Request-Id req-000n
	serial    int                  // tokens issued so far
	tokens    map[string]fakeToken // tokens accepted and not expired, access and refresh
	soonest   time.Time            // no token in tokens expires before it
	optimized int                  // optimizer answers given: n of the last msg-000n
	feedback  []fakeFeedbackOut    // stored feedback, oldest first
	paths     map[string]*fakePath // by URL path

	answers    map[fakeIdemKey]fakeAnswer // by Idempotency-Key: the newest (see serveAPI)
	oldAnswers map[fakeIdemKey]fakeAnswer // the generation before those
}

// fakePath is what the server knows of one URL path.
type fakePath struct {
	requests int            // every request, however old
	received []fakeReceived // the last requests, a ring once full: the oldest at oldest
	oldest   int
	scripted []fakeScripted // answers queued by Respond, the next first
}

// fakeReceived is a request kept for Received; seq orders requests across
// paths. Its header is a flat copy, key and value for each value: one
// allocation on every request, where a copy of the map costs three.
type fakeReceived struct {
	seq          int
	method, path string
	header       []string
	body         []byte
	at           time.Time
}

// fakeScripted is an answer queued by Respond for left more requests.
type fakeScripted struct {
	resp FakeResponse
	left int
}

type fakeToken struct {
	refresh bool
	expires time.Time // on the server's clock; the token is refused from then on
}

type fakeIdemKey struct{ path, key string }

// fakeAnswer is a successful answer kept for its Idempotency-Key.
type fakeAnswer struct {
	body []byte
}

// FakeResponse is an answer scripted with FakeServer.Respond.
type FakeResponse struct {
	// Status is the answer's HTTP status code, from 100 to 999 (any other
	// value but 0 is taken as 500). 0 gives the server's normal answer to
	// the request, with Header added, after Delay.
	Status int

	// Header is sent with the answer (Retry-After, X-Request-Id, ...). A
	// header it names replaces the server's own, X-Request-Id included. The
	// clients of NewClient read a Retry-After date against the server's
	// clock (Now).
	Header http.Header

	// Body is sent as is. Empty with a Status of 400 or more, it is
	// {"error": "<status text>"}, the text as http.StatusText gives it.
	Body string

	// Delay is real time the server waits before answering. It ends early
	// when the request's context ends (the client gave up), and the request
	// then gets no answer.
	Delay time.Duration
}

// FakeRequest is a request a FakeServer received, as Received returns it.
type FakeRequest struct {
	Method, Path string      // Path is the URL path, without the query
	Header       http.Header // as received
	Body         []byte      // as received (its first MiB when larger)
	At           time.Time   // when it arrived, by the server's clock
}

// NewFakeServer returns a FakeServer that accepts FakeAPIKey and issues
// access tokens living an hour.
func NewFakeServer() *FakeServer {
	s := &FakeServer{}
	s.mu.Lock()
	s.ready()
	s.mu.Unlock()
	return s
}

// ready sets the defaults of a server not yet used. s.mu must be held.
func (s *FakeServer) ready() {
	if s.inited {
		return
	}
	s.inited = true
	s.lifetime, s.expiresIn = time.Hour, 3600
	s.tokens = map[string]fakeToken{}
	s.paths = map[string]*fakePath{}
	s.answers = map[fakeIdemKey]fakeAnswer{}
}

// Now returns the time on the server's clock. It starts at
// 2025-01-15T10:00:00Z, for a zero-value server too, and moves only when
// Advance moves it.
func (s *FakeServer) Now() time.Time {
	const start = 1736935200 // 2025-01-15T10:00:00Z in Unix seconds
	return time.Unix(start, s.clock.Load()).UTC()
}

// Advance moves the server's clock forward by d, and with it the clock by
// which every client made by s.NewClient judges its tokens: their
// expiry, the refresh margin, Token().ExpiresAt. Tokens whose lifetime
// ends are refused from then on, and forgotten. A d of zero or less does
// nothing.
func (s *FakeServer) Advance(d time.Duration) {
	if d <= 0 {
		return
	}
	for {
		old := s.clock.Load()
		next := old + int64(d)
		if next < old {
			next = 1<<63 - 1 // past the year 2300: the clock stops there
		}
		if s.clock.CompareAndSwap(old, next) {
			break
		}
	}
	s.mu.Lock()
	s.sweepLocked()
	s.mu.Unlock()
}

// sweepLocked forgets the tokens that have expired, so that the server's
// memory stays flat over any number of token lifetimes. It looks at every
// token only when one has expired. s.mu must be held.
func (s *FakeServer) sweepLocked() {
	now := s.Now()
	if len(s.tokens) == 0 || now.Before(s.soonest) {
		return
	}
	var soonest time.Time
	for tok, t := range s.tokens {
		switch {
		case !now.Before(t.expires):
			delete(s.tokens, tok)
		case soonest.IsZero() || t.expires.Before(soonest):
			soonest = t.expires
		}
	}
	s.soonest = soonest
}

// NewClient returns a client of the server that talks to it in memory, with
// no socket: through an http.RoundTripper that serves each request with
// ServeHTTP and honours the request's context. The client authenticates
// with FakeAPIKey, sends FakeCompanyGUID as the company, has DefaultBaseURL
// as its base URL (the host is ignored in memory) and retries after 1ms to
// 10ms instead of 500ms to 8s, so that tests stay fast. opts come after
// these and win; WithHTTPClient replaces the in-memory transport. Whatever
// the options, the client judges its tokens by the server's clock (see
// Advance).
func (s *FakeServer) NewClient(opts ...ClientOption) (*Client, error) {
	all := make([]ClientOption, 0, 4+len(opts))
	all = append(all,
		WithBaseURL(DefaultBaseURL),
		WithHTTPClient(&http.Client{Transport: &fakeTransport{s: s}}),
		WithCompanyGUID(FakeCompanyGUID),
		WithRetryBackoff(time.Millisecond, 10*time.Millisecond),
	)
	c, err := NewClient(FakeAPIKey, append(all, opts...)...)
	if err != nil {
		return nil, err
	}
	c.useClock(s.Now)
	return c, nil
}

// Respond makes the next times requests to path get r, after the answers
// already queued for path; times of zero or less clears the queue of path.
// path is compared with the request's URL path as is, whatever the method.
//
// An answer with a Status is given before every check, authentication
// included, so Respond("/api/auth/token", ...) answers the next token
// exchange; its Content-Type is application/json unless r.Header sets one.
// A Status of 0 gives the normal answer, with r.Header added, after
// r.Delay.
func (s *FakeServer) Respond(path string, times int, r FakeResponse) {
	if r.Status != 0 && (r.Status < 100 || r.Status > 999) {
		r.Status = http.StatusInternalServerError
	}
	if r.Header != nil {
		h := make(http.Header, len(r.Header))
		for k, v := range r.Header {
			h[http.CanonicalHeaderKey(k)] = append([]string(nil), v...)
		}
		r.Header = h
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready()
	p := s.pathLocked(path)
	if times <= 0 {
		p.scripted = nil
		return
	}
	p.scripted = append(p.scripted, fakeScripted{resp: r, left: times})
}

// Fail makes the next request to path get status and the body
// {"error": message}: it is Respond(path, 1, FakeResponse{Status: status,
// Body: `{"error": message}`}). Each call queues one more answer.
func (s *FakeServer) Fail(path string, status int, message string) {
	s.Respond(path, 1, FakeResponse{Status: status, Body: string(fakeErrorBody(message))})
}

// Received returns the requests the server received on path (the
// request's URL path as is), oldest first, whatever their answer: refused
// and scripted ones included. With path "" it returns those of every path,
// merged in the order they arrived. The server keeps the last 1,000
// requests of each path (Requests counts them all). What it returns is a
// copy: changing it changes nothing in the server.
func (s *FakeServer) Received(path string) []FakeRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var kept []fakeReceived
	if path != "" {
		if p := s.paths[path]; p != nil {
			kept = p.inOrder(nil)
		}
	} else {
		for _, p := range s.paths {
			kept = p.inOrder(kept)
		}
		sort.Slice(kept, func(i, j int) bool { return kept[i].seq < kept[j].seq })
	}
	out := make([]FakeRequest, len(kept))
	for i, k := range kept {
		h := make(http.Header, len(k.header)/2)
		for j := 0; j < len(k.header); j += 2 {
			h[k.header[j]] = append(h[k.header[j]], k.header[j+1])
		}
		out[i] = FakeRequest{Method: k.method, Path: k.path, Header: h, Body: bytes.Clone(k.body), At: k.at}
	}
	return out
}

// RotateRefreshTokens sets whether a refresh answer carries a new refresh
// token. While on, the refresh token a refresh was made with is revoked at
// once: used again, it gets 401. Off, the default, a refresh keeps the
// refresh token and its answer carries none.
func (s *FakeServer) RotateRefreshTokens(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rotate = on
}

// RevokeTokens revokes every access and refresh token issued so far, as a
// key rotation or a server restart would: the API endpoints refuse them with
// 401, and so does the refresh endpoint, so a client falls back to its API
// key and recovers by itself. Tokens issued later are accepted.
func (s *FakeServer) RevokeTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.tokens)
}

// SetTokenLifetime sets how long access tokens issued from now on live, by
// the server's clock (see Advance); the default is an hour. Their
// expires_in is d in whole seconds, rounded down (toward zero), so a
// lifetime under a second is sent as 0, and a client then reads the
// token's exp claim. Zero or negative issues tokens that are expired at
// once. Refresh tokens live a week.
func (s *FakeServer) SetTokenLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready()
	s.lifetime, s.expiresIn = d, int(d/time.Second)
}

// Format implements fmt.Formatter: every verb prints the server's name and
// clock, never the tokens it issued (which its clients hold).
func (s *FakeServer) Format(f fmt.State, verb rune) {
	format(f, verb, "apala.FakeServer", []slog.Attr{slog.Time("now", s.Now())})
}

// Requests reports how many requests the server received on path (the
// request's URL path as is), whatever their answer: refused and failed
// requests count, however old.
func (s *FakeServer) Requests(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.paths[path]; p != nil {
		return p.requests
	}
	return 0
}

// Feedback returns the feedback entries stored so far, oldest first, as the
// server answered them (times parsed, zero when null). It returns a new
// slice each time: changing it changes nothing in the server. A request
// replayed by its Idempotency-Key stores nothing.
func (s *FakeServer) Feedback() []FeedbackResponse {
	s.mu.Lock()
	stored := s.feedback[:len(s.feedback):len(s.feedback)]
	s.mu.Unlock()
	out := make([]FeedbackResponse, len(stored))
	for i := range stored {
		out[i] = stored[i].response()
	}
	return out
}

// setHook sets a function run for every request after it is counted and
// recorded and before anything else, Respond's answers included, with the
// body already read and set again on r; nil removes it. It answers the
// request itself by returning true, or lets the server go on by returning
// false. It runs without the server's lock, so it may block (to hold a
// request) and call the server. In memory r.Header and r.URL are the
// client's own: it must not modify them. Users who need such answers wrap
// ServeHTTP in a handler of their own.
func (s *FakeServer) setHook(h func(w http.ResponseWriter, r *http.Request) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hook = h
	s.hooked.Store(h != nil)
}

// grant issues a token pair the server accepts, as an exchange of the API
// key would, without a request: for the package's tests that put the pair
// straight into a client, which users cannot do.
func (s *FakeServer) grant() (access, refresh string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready()
	return s.pairLocked()
}

// pairLocked issues an access token and a refresh token. s.mu must be held.
func (s *FakeServer) pairLocked() (access, refresh string) {
	now := s.Now()
	return s.issueLocked(false, now), s.issueLocked(true, now)
}

// issueLocked issues a JWT-shaped token and records it as accepted until it
// expires: an access token living s.lifetime from now, or a refresh token
// living a week. Its claims carry the company, its kind, a serial that
// makes it unique, its iat and its exp; its signature carries the word
// SECRET. s.mu must be held.
func (s *FakeServer) issueLocked(refresh bool, now time.Time) string {
	s.serial++
	kind, life := "access", s.lifetime
	if refresh {
		kind, life = "refresh", 7*24*time.Hour
	}
	exp := now.Add(life)
	n := strconv.Itoa(s.serial)
	claims := `{"sub":"` + FakeCompanyGUID + `","typ":"` + kind + `","jti":` + n +
		`,"iat":` + strconv.FormatInt(now.Unix(), 10) + `,"exp":` + strconv.FormatInt(exp.Unix(), 10) + `}`
	tok := fakeJWTHeader + "." + base64.RawURLEncoding.EncodeToString([]byte(claims)) + ".SECRET-" + kind + "-" + n
	if now.Before(exp) { // one expired at birth is never accepted: nothing to keep
		if len(s.tokens) == 0 || exp.Before(s.soonest) {
			s.soonest = exp
		}
		s.tokens[tok] = fakeToken{refresh: refresh, expires: exp}
	}
	return tok
}

// validLocked reports whether tok is an accepted token of its kind that has
// not expired. s.mu must be held.
func (s *FakeServer) validLocked(tok string, refresh bool) bool {
	t, ok := s.tokens[tok]
	return ok && t.refresh == refresh && s.Now().Before(t.expires)
}

// ServeHTTP answers one request to the Apala API. Mount the server on
// httptest.NewServer to reach it through a socket.
func (s *FakeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, tooLarge, err := fakeRequestBody(r)
	s.serve(w, r, body, tooLarge, err, true)
}

// serve is ServeHTTP with r's body already read: body, or its start when
// tooLarge, and the error that ended the reading. It never changes r.
// withHook false leaves the hook out, for a request that started before one
// was set (see fakeTransport.RoundTrip).
func (s *FakeServer) serve(w http.ResponseWriter, r *http.Request, body []byte, tooLarge bool, readErr error, withHook bool) {
	path := r.URL.Path
	got := fakeReceived{method: r.Method, path: path, header: fakeFlat(r.Header), body: body, at: s.Now()}

	s.mu.Lock()
	s.ready()
	s.requests++
	rid := fakeID("req-", s.requests)
	p := s.pathLocked(path)
	p.requests++
	got.seq = s.requests
	p.record(got)
	var hook func(http.ResponseWriter, *http.Request) bool
	if withHook {
		hook = s.hook
	}
	var sc FakeResponse
	var scripted bool
	if hook == nil {
		sc, scripted = p.pop()
	}
	s.mu.Unlock()

	// Every answer names its request, as Phoenix's Plug.RequestId does.
	h := w.Header()
	h["X-Request-Id"] = []string{rid}
	if hook != nil {
		if hook(w, r) {
			return
		}
		s.mu.Lock()
		sc, scripted = p.pop()
		s.mu.Unlock()
	}
	if scripted {
		if !fakeWait(r.Context(), sc.Delay) {
			return // the client is gone: nobody reads an answer
		}
		for k, v := range sc.Header {
			h[k] = append([]string(nil), v...)
		}
		if sc.Status != 0 {
			body := []byte(sc.Body)
			if len(body) == 0 && sc.Status >= 400 {
				text := http.StatusText(sc.Status)
				if text == "" {
					text = "status " + strconv.Itoa(sc.Status)
				}
				body = fakeErrorBody(text)
			}
			fakeReply(w, sc.Status, body)
			return
		}
	}

	switch path {
	case fakePathToken, fakePathRefresh, fakePathProcessing, fakePathOptimizer, fakePathFeedback, fakePathBulk:
	default:
		fakeError(w, http.StatusNotFound, "no such endpoint")
		return
	}
	if r.Method != http.MethodPost {
		fakeSetOwn(h, "Allow", http.MethodPost)
		fakeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed: use POST")
		return
	}
	switch {
	case readErr != nil:
		fakeError(w, http.StatusBadRequest, "reading the request body failed")
		return
	case tooLarge:
		fakeError(w, http.StatusRequestEntityTooLarge, "request body larger than 1 MiB")
		return
	case !fakeIsJSON(fakeGet(r.Header, "Content-Type")):
		fakeError(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return
	}

	switch path {
	case fakePathToken:
		s.serveToken(w, r, body)
		return
	case fakePathRefresh:
		s.serveRefresh(w, r, body)
		return
	}
	tok, ok := fakeBearer(fakeGet(r.Header, "Authorization"))
	if ok {
		s.mu.Lock()
		ok = s.validLocked(tok, false)
		s.mu.Unlock()
	}
	if !ok {
		fakeReply(w, http.StatusUnauthorized, []byte(fakeUnauthorized))
		return
	}
	s.serveAPI(w, path, fakeGet(r.Header, "Idempotency-Key"), body)
}

// fakeWait waits d of real time, or until ctx ends; it reports whether it
// waited the whole of d.
func fakeWait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// fakeSetOwn sets a header of the server's own unless a scripted answer set
// it already.
func fakeSetOwn(h http.Header, key, value string) {
	if _, ok := h[key]; !ok {
		h[key] = []string{value}
	}
}

// fakeFlat returns h's keys and values in one slice, key and value for each
// value.
func fakeFlat(h http.Header) []string {
	flat := make([]string, 0, 2*len(h)) // most keys have one value
	for k, v := range h {
		for _, x := range v {
			flat = append(flat, k, x)
		}
	}
	return flat
}

// pathLocked returns the state of path, made on first use. s.mu must be
// held.
func (s *FakeServer) pathLocked(path string) *fakePath {
	p := s.paths[path]
	if p == nil {
		p = &fakePath{}
		s.paths[path] = p
	}
	return p
}

// record keeps r as the newest of the last 1,000 requests to p. The
// server's mu must be held.
func (p *fakePath) record(r fakeReceived) {
	const keep = 1000
	if len(p.received) < keep {
		p.received = append(p.received, r)
		return
	}
	p.received[p.oldest] = r
	p.oldest = (p.oldest + 1) % keep
}

// inOrder appends the requests kept for p to dst, oldest first. The
// server's mu must be held.
func (p *fakePath) inOrder(dst []fakeReceived) []fakeReceived {
	return append(append(dst, p.received[p.oldest:]...), p.received[:p.oldest]...)
}

// pop takes the next scripted answer. The server's mu must be held.
func (p *fakePath) pop() (FakeResponse, bool) {
	if len(p.scripted) == 0 {
		return FakeResponse{}, false
	}
	sc := &p.scripted[0]
	r := sc.resp
	if sc.left--; sc.left == 0 {
		p.scripted = p.scripted[1:]
		if len(p.scripted) == 0 {
			p.scripted = nil
		}
	}
	return r, true
}

// fakeRequestBody reads r's body with fakeReadBody and sets it again on r,
// so that a hook can read it.
func fakeRequestBody(r *http.Request) (body []byte, tooLarge bool, err error) {
	if r.Body != nil {
		body, tooLarge, err = fakeReadBody(r.Body, r.ContentLength)
	}
	r.Body = &fakeBuf{b: body}
	return body, tooLarge, err
}

// fakeGet is h.Get(key) for a key already canonical: Get would
// canonicalise it again on every request.
func fakeGet(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// fakeIsJSON reports whether a Content-Type names application/json.
func fakeIsJSON(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.EqualFold(strings.TrimSpace(mt), "application/json")
}

// fakeBearer returns the token of an Authorization header of the Bearer
// scheme (its name compared without case, as RFC 9110 says).
func fakeBearer(h string) (string, bool) {
	const scheme = "Bearer "
	if len(h) <= len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) {
		return "", false
	}
	return h[len(scheme):], true
}

// fakeReply writes a JSON answer. To the in-memory transport it hands body
// over without a copy: the server never changes an answer once written.
func fakeReply(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	_, typed := h["Content-Type"]
	if fw, ok := w.(*fakeResponse); ok && fw.status == 0 && len(fw.b) == 0 {
		if !typed {
			fw.ct[0] = fakeJSONType
			h["Content-Type"] = fw.ct[:]
		}
		fw.status = status
		fw.b = body[:len(body):len(body)] // a later Write copies instead of appending in place
		return
	}
	if !typed {
		h["Content-Type"] = []string{fakeJSONType}
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// fakeError writes {"error": msg}.
func fakeError(w http.ResponseWriter, status int, msg string) {
	fakeReply(w, status, fakeErrorBody(msg))
}

// fakeErrorBody returns {"error": msg}.
func fakeErrorBody(msg string) []byte {
	body, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{msg}) // a struct of one string always marshals
	return body
}

// ---- authentication ----

type fakeAuthOut struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token,omitempty"` // omitted from a refresh without rotation
	TokenType    string `json:"token_type"`
	ExpiresIn    *int   `json:"expires_in,omitempty"`
	CompanyID    string `json:"company_id,omitempty"`   // token answers only
	CompanyName  string `json:"company_name,omitempty"` // token answers only
}

func (s *FakeServer) serveToken(w http.ResponseWriter, r *http.Request, body []byte) {
	var in struct {
		APIKey *string `json:"api_key"`
	}
	if msg := fakeAuthRequest(r, body, &in); msg != "" {
		fakeError(w, http.StatusBadRequest, msg)
		return
	}
	if in.APIKey == nil {
		fakeError(w, http.StatusBadRequest, `want exactly {"api_key": ...}`)
		return
	}
	s.mu.Lock()
	key := s.apiKey
	if key == "" {
		key = FakeAPIKey
	}
	if *in.APIKey != key {
		s.mu.Unlock()
		fakeError(w, http.StatusUnauthorized, "invalid API key")
		return
	}
	out := fakeAuthOut{TokenType: "Bearer", CompanyID: FakeCompanyGUID, CompanyName: fakeCompanyName}
	out.AccessToken, out.RefreshToken = s.pairLocked()
	out.ExpiresIn = s.expiresInLocked()
	s.mu.Unlock()
	b, _ := json.Marshal(&out) // strings and an int always marshal
	fakeReply(w, http.StatusOK, b)
}

func (s *FakeServer) serveRefresh(w http.ResponseWriter, r *http.Request, body []byte) {
	var in struct {
		RefreshToken *string `json:"refresh_token"`
	}
	if msg := fakeAuthRequest(r, body, &in); msg != "" {
		fakeError(w, http.StatusBadRequest, msg)
		return
	}
	if in.RefreshToken == nil {
		fakeError(w, http.StatusBadRequest, `want exactly {"refresh_token": ...}`)
		return
	}
	s.mu.Lock()
	if !s.validLocked(*in.RefreshToken, true) {
		s.mu.Unlock()
		fakeError(w, http.StatusUnauthorized, "invalid refresh token")
		return
	}
	now := s.Now()
	out := fakeAuthOut{TokenType: "Bearer", AccessToken: s.issueLocked(false, now), ExpiresIn: s.expiresInLocked()}
	if s.rotate {
		delete(s.tokens, *in.RefreshToken)
		out.RefreshToken = s.issueLocked(true, now)
	}
	s.mu.Unlock()
	b, _ := json.Marshal(&out) // strings and an int always marshal
	fakeReply(w, http.StatusOK, b)
}

// expiresInLocked returns the expires_in of an auth answer; nil leaves it
// out. s.mu must be held.
func (s *FakeServer) expiresInLocked() *int {
	if s.noExpiry {
		return nil
	}
	n := s.expiresIn
	return &n
}

// fakeAuthRequest checks what both auth endpoints require: no Authorization
// header, and a body of exactly one JSON object without unknown fields.
func fakeAuthRequest(r *http.Request, body []byte, v any) string {
	if fakeGet(r.Header, "Authorization") != "" {
		return "an auth endpoint takes no Authorization header"
	}
	return fakeDecode(body, v)
}

// ---- the API endpoints ----

// fakeMessage is a message on the wire; reply_or_not must be a string.
type fakeMessage struct {
	Content       string `json:"content"`
	Channel       string `json:"channel"`
	MessageID     string `json:"message_id"`
	SendTimestamp string `json:"send_timestamp"`
	ReplyOrNot    string `json:"reply_or_not"`
}

type fakeProcessingIn struct {
	Company          string        `json:"company"`
	CustomerID       string        `json:"customer_id"`
	ZipCode          string        `json:"zip_code"`
	Messages         []fakeMessage `json:"messages"`
	CandidateMessage *fakeMessage  `json:"candidate_message"`
}

type fakeProcessingOut struct {
	Company          string               `json:"company"`
	CustomerID       string               `json:"customer_id"`
	CandidateMessage fakeCandidateMessage `json:"candidate_message"`
}

type fakeCandidateMessage struct {
	Content   string `json:"content"`
	Channel   string `json:"channel"`
	MessageID string `json:"message_id"`
}

type fakeOptimizerIn struct {
	Company          string        `json:"company"`
	CustomerID       string        `json:"customer_id"`
	ZipCode          string        `json:"zip_code"`
	Messages         []fakeMessage `json:"messages"`
	CandidateMessage string        `json:"candidate_message"`

	IsRepeatBorrower       *int   `json:"is_repeat_borrower"`
	StateID                *int   `json:"state_id"`
	CreditScoreBin         string `json:"credit_score_bin"`
	RequestedLoanAmountBin string `json:"requested_loan_amount_bin"`
	AgeBin                 string `json:"age_bin"`
	MonthlyIncomeBin       string `json:"monthly_income_bin"`
	ApplicationReason      string `json:"application_reason"`
}

type fakeOptimizerOut struct {
	MessageID          string `json:"message_id"`
	OptimizedMessage   string `json:"optimized_message"`
	RecommendedChannel string `json:"recommended_channel"`
	OriginalMessage    string `json:"original_message"`
}

// fakeFeedbackIn is a feedback item on the wire.
type fakeFeedbackIn struct {
	MessageID         string   `json:"message_id"`
	CustomerResponded *bool    `json:"customer_responded"`
	Score             string   `json:"score"`
	ActualSentMessage string   `json:"actual_sent_message"`
	PositiveRewards   []string `json:"positive_rewards"`
	SendTimestamp     string   `json:"send_timestamp"`
	ReplyTimestamp    string   `json:"reply_timestamp"`
}

// fakeFeedbackOut is a stored feedback entry as the server answers it.
type fakeFeedbackOut struct {
	ID                string   `json:"id"`
	MessageID         string   `json:"message_id"`
	CustomerResponded bool     `json:"customer_responded"`
	Score             string   `json:"score"`
	ActualSentMessage *string  `json:"actual_sent_message"`
	PositiveRewards   []string `json:"positive_rewards"`
	SendTimestamp     *string  `json:"send_timestamp"`
	ReplyTimestamp    *string  `json:"reply_timestamp"`
	InsertedAt        string   `json:"inserted_at"`
}

type fakeBulkOut struct {
	Success  bool              `json:"success"`
	Count    int               `json:"count"`
	Feedback []fakeFeedbackOut `json:"feedback"`
}

// fakeRequest is the decoded body of a request to an API endpoint.
type fakeRequest interface {
	check() string                  // what is wrong with it, naming the field; "" when nothing
	company() string                // the company it names; "" when the endpoint takes none
	answerLocked(s *FakeServer) any // its answer, with the ids and entries it makes; s.mu must be held
}

// serveAPI answers an authenticated request to a message or feedback
// endpoint: 422 for bad input, 403 for another company, else the answer,
// which an Idempotency-Key already answered on path replays.
func (s *FakeServer) serveAPI(w http.ResponseWriter, path, key string, body []byte) {
	var in fakeRequest
	switch path {
	case fakePathProcessing:
		in = new(fakeProcessingIn)
	case fakePathOptimizer:
		in = new(fakeOptimizerIn)
	case fakePathFeedback:
		in = new(fakeFeedbackIn)
	default:
		in = new(fakeBulkIn)
	}
	msg := fakeDecode(body, in)
	if msg == "" {
		msg = in.check()
	}
	switch {
	case msg != "":
		fakeError(w, http.StatusUnprocessableEntity, msg)
		return
	case in.company() != "" && !strings.EqualFold(in.company(), FakeCompanyGUID):
		fakeError(w, http.StatusForbidden, "company does not match the token")
		return
	}

	s.mu.Lock()
	if key != "" {
		if a, ok := s.answerLocked(fakeIdemKey{path, key}); ok {
			s.mu.Unlock()
			// The first answer again, whatever the body: a resent message
			// call carries new generated ids and times.
			fakeSetOwn(w.Header(), "Idempotent-Replayed", "true")
			fakeReply(w, http.StatusOK, a.body)
			return
		}
	}
	out, _ := json.Marshal(in.answerLocked(s)) // strings, ints and bools always marshal
	if key != "" {
		// The answers are kept in two generations of up to keep each: the
		// server remembers at least the last keep keys and at most twice
		// as many, as a real server forgets keys after a while, so that
		// its memory stays flat under load.
		const keep = 4096
		if len(s.answers) >= keep {
			s.oldAnswers, s.answers = s.answers, make(map[fakeIdemKey]fakeAnswer, keep)
		}
		s.answers[fakeIdemKey{path, key}] = fakeAnswer{body: out}
	}
	s.mu.Unlock()
	fakeReply(w, http.StatusOK, out)
}

func (in *fakeProcessingIn) company() string { return in.Company }

func (in *fakeProcessingIn) answerLocked(*FakeServer) any {
	c := in.CandidateMessage
	return &fakeProcessingOut{Company: in.Company, CustomerID: in.CustomerID,
		CandidateMessage: fakeCandidateMessage{Content: c.Content, Channel: c.Channel, MessageID: c.MessageID}}
}

func (in *fakeOptimizerIn) company() string { return in.Company }

func (in *fakeOptimizerIn) answerLocked(s *FakeServer) any {
	s.optimized++
	channel := "SMS"
	if len(in.CandidateMessage) > 160 {
		channel = "EMAIL"
	}
	return &fakeOptimizerOut{MessageID: fakeID("msg-", s.optimized), OptimizedMessage: fakeOptimize(in.CandidateMessage),
		RecommendedChannel: channel, OriginalMessage: in.CandidateMessage}
}

func (f *fakeFeedbackIn) company() string { return "" }

func (f *fakeFeedbackIn) answerLocked(s *FakeServer) any {
	out := s.storeLocked(f)
	return &out
}

// fakeBulkIn is the body of /api/feedback/bulk.
type fakeBulkIn struct {
	Feedback []fakeFeedbackIn `json:"feedback"`
}

func (in *fakeBulkIn) check() string {
	if len(in.Feedback) == 0 {
		return "feedback: want a non-empty list"
	}
	for i := range in.Feedback {
		if msg := in.Feedback[i].checkAs("feedback[" + strconv.Itoa(i) + "]."); msg != "" {
			return msg
		}
	}
	return ""
}

func (in *fakeBulkIn) company() string { return "" }

func (in *fakeBulkIn) answerLocked(s *FakeServer) any {
	out := &fakeBulkOut{Success: true, Count: len(in.Feedback), Feedback: make([]fakeFeedbackOut, len(in.Feedback))}
	for i := range in.Feedback {
		out.Feedback[i] = s.storeLocked(&in.Feedback[i])
	}
	return out
}

// answerLocked returns the answer kept for k. s.mu must be held.
func (s *FakeServer) answerLocked(k fakeIdemKey) (fakeAnswer, bool) {
	if a, ok := s.answers[k]; ok {
		return a, true
	}
	a, ok := s.oldAnswers[k]
	return a, ok
}

// storeLocked stores one checked feedback item and returns its entry.
// s.mu must be held.
func (s *FakeServer) storeLocked(in *fakeFeedbackIn) fakeFeedbackOut {
	out := fakeFeedbackOut{
		ID:                fakeID("fb-", len(s.feedback)+1),
		MessageID:         in.MessageID,
		CustomerResponded: *in.CustomerResponded,
		Score:             in.Score,
		ActualSentMessage: fakeNullable(&in.ActualSentMessage),
		PositiveRewards:   in.PositiveRewards,
		SendTimestamp:     fakeNullable(&in.SendTimestamp),
		ReplyTimestamp:    fakeNullable(&in.ReplyTimestamp),
		InsertedAt:        fakeISO(s.Now()),
	}
	if out.PositiveRewards == nil {
		out.PositiveRewards = []string{}
	}
	s.feedback = append(s.feedback, out)
	return out
}

// response is the entry as a client reads it.
func (f *fakeFeedbackOut) response() FeedbackResponse {
	r := FeedbackResponse{ID: f.ID, MessageID: f.MessageID, CustomerResponded: f.CustomerResponded,
		Score: Score(f.Score), PositiveRewards: make([]PositiveReward, len(f.PositiveRewards))}
	for i, p := range f.PositiveRewards {
		r.PositiveRewards[i] = PositiveReward(p)
	}
	if f.ActualSentMessage != nil {
		r.ActualSentMessage = *f.ActualSentMessage
	}
	if f.SendTimestamp != nil {
		r.SendTimestamp, _ = fakeParseTime(*f.SendTimestamp) // checked when stored
	}
	if f.ReplyTimestamp != nil {
		r.ReplyTimestamp, _ = fakeParseTime(*f.ReplyTimestamp)
	}
	r.InsertedAt, _ = fakeParseTime(f.InsertedAt)
	return r
}

// fakeISO formats t as Python's isoformat formats a UTC time without an
// offset: to the microsecond, with six fraction digits when they are not
// all zero and none when they are.
func fakeISO(t time.Time) string {
	t = t.UTC().Truncate(time.Microsecond)
	if t.Nanosecond() == 0 {
		return t.Format("2006-01-02T15:04:05")
	}
	return t.Format("2006-01-02T15:04:05.000000")
}

// fakeNullable returns nil for "", so that the field is sent as null.
func fakeNullable(s *string) *string {
	if *s == "" {
		return nil
	}
	return s
}

// fakeID returns prefix followed by n in at least four digits.
func fakeID(prefix string, n int) string {
	var buf [24]byte // one allocation, the string's: every answer makes one id or two
	b := append(buf[:0], prefix...)
	for m := 1000; m > 1 && n < m; m /= 10 {
		b = append(b, '0')
	}
	return string(strconv.AppendInt(b, int64(n), 10))
}

// fakeOptimize is the optimizer's deterministic rewording.
func fakeOptimize(candidate string) string {
	return strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(candidate), ".")) + fakeOptimizeSuffix
}

// ---- checks ----

func (in *fakeProcessingIn) check() string {
	if msg := fakeCheckCustomer(in.Company, in.CustomerID, in.ZipCode, in.Messages); msg != "" {
		return msg
	}
	if in.CandidateMessage == nil {
		return "candidate_message: required"
	}
	return in.CandidateMessage.check("candidate_message.")
}

func (in *fakeOptimizerIn) check() string {
	if msg := fakeCheckCustomer(in.Company, in.CustomerID, in.ZipCode, in.Messages); msg != "" {
		return msg
	}
	switch {
	case strings.TrimSpace(in.CandidateMessage) == "":
		return "candidate_message: required"
	case in.IsRepeatBorrower != nil && *in.IsRepeatBorrower != 0 && *in.IsRepeatBorrower != 1:
		return "is_repeat_borrower: want 0 or 1"
	case in.StateID != nil && *in.StateID < 1:
		return "state_id: want 1 or more"
	}
	for _, b := range [...]struct{ field, value, set string }{
		{"credit_score_bin", in.CreditScoreBin, fakeCreditScores},
		{"requested_loan_amount_bin", in.RequestedLoanAmountBin, fakeLoanAmounts},
		{"age_bin", in.AgeBin, fakeAges},
		{"monthly_income_bin", in.MonthlyIncomeBin, fakeIncomes},
		{"application_reason", in.ApplicationReason, fakeReasons},
	} {
		// "" is unset, as the server's casting reads it.
		if b.value != "" && !fakeIn(b.value, b.set) {
			return fakeNotOneOf(b.field, b.value, b.set)
		}
	}
	return ""
}

// fakeCheckCustomer checks the fields both message endpoints share.
func fakeCheckCustomer(company, customer, zip string, msgs []fakeMessage) string {
	switch {
	case company == "":
		return "company: required"
	case !fakeIsUUID(company):
		return "company: not a UUID"
	case customer == "":
		return "customer_id: required"
	case !fakeIsUUID(customer):
		return "customer_id: not a UUID"
	case zip != "" && !fakeIsZip(zip):
		return "zip_code: want exactly 5 digits"
	case msgs == nil:
		return "messages: required (a list, possibly empty)"
	}
	for i := range msgs {
		if msg := msgs[i].check("messages[" + strconv.Itoa(i) + "]."); msg != "" {
			return msg
		}
	}
	return ""
}

// check checks a message; field prefixes the names in its answer.
func (m *fakeMessage) check(field string) string {
	switch {
	case strings.TrimSpace(m.Content) == "":
		return field + "content: required"
	case m.Channel == "":
		return field + "channel: required"
	case !fakeIn(m.Channel, fakeChannels):
		return fakeNotOneOf(field+"channel", m.Channel, fakeChannels)
	case m.MessageID == "":
		return field + "message_id: required"
	case m.ReplyOrNot != "true" && m.ReplyOrNot != "false":
		return field + `reply_or_not: want the string "true" or "false"`
	case m.SendTimestamp == "":
		return field + "send_timestamp: required"
	}
	if _, err := time.Parse(time.RFC3339, m.SendTimestamp); err != nil {
		return field + "send_timestamp: want RFC 3339 with Z or an offset"
	}
	return ""
}

func (f *fakeFeedbackIn) check() string { return f.checkAs("") }

// checkAs checks a feedback item; field prefixes the names in its answer.
func (f *fakeFeedbackIn) checkAs(field string) string {
	switch {
	case f.MessageID == "":
		return field + "message_id: required"
	case f.CustomerResponded == nil:
		return field + "customer_responded: required"
	case f.Score == "":
		return field + "score: required"
	case !fakeIn(f.Score, fakeScores):
		return fakeNotOneOf(field+"score", f.Score, fakeScores)
	}
	for i, r := range f.PositiveRewards {
		if !fakeIn(r, fakeRewards) {
			return fakeNotOneOf(field+"positive_rewards["+strconv.Itoa(i)+"]", r, fakeRewards)
		}
	}
	for _, t := range [...]struct{ name, value string }{{"send_timestamp", f.SendTimestamp}, {"reply_timestamp", f.ReplyTimestamp}} {
		if t.value == "" {
			continue // unset
		}
		if _, err := fakeParseTime(t.value); err != nil {
			return field + t.name + ": want ISO 8601"
		}
	}
	return ""
}

// fakeDecode decodes body, exactly one JSON object without unknown fields,
// into v. It returns what is wrong, naming the field when it can; "" when
// nothing is.
func fakeDecode(body []byte, v any) string {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &te):
			got := te.Value // "bool", "string", "number 1.5", ...
			if got == "bool" {
				got = "boolean"
			}
			switch {
			case te.Field == "":
				return "want a JSON object, got JSON " + got
			case strings.HasSuffix(te.Field, "reply_or_not"):
				return te.Field + `: want the string "true" or "false", not a JSON ` + got
			case te.Type == nil:
				return te.Field + ": wrong type: JSON " + got
			}
			return te.Field + ": want " + fakeKind(te.Type.String()) + ", got JSON " + got
		case errors.As(err, &se):
			return "malformed JSON: " + se.Error()
		case err == io.EOF:
			return "empty body: want a JSON object"
		case errors.Is(err, io.ErrUnexpectedEOF):
			return "malformed JSON: unexpected end of input"
		}
		return strings.TrimPrefix(err.Error(), "json: ") // unknown field "..."
	}
	for _, c := range body[dec.InputOffset():] {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return "malformed JSON: data after the object"
		}
	}
	return ""
}

// fakeKind names the JSON kind a Go type is decoded from.
func fakeKind(goType string) string {
	switch {
	case goType == "string":
		return "a string"
	case goType == "bool":
		return "true or false"
	case goType == "int":
		return "an integer"
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	}
	return "an object"
}

// fakeIn reports whether v is one of the values in set, separated by ", ".
func fakeIn(v, set string) bool {
	for set != "" {
		var item string
		item, set, _ = strings.Cut(set, ", ")
		if item == v {
			return true
		}
	}
	return false
}

func fakeNotOneOf(field, v, set string) string {
	if len(v) > 64 {
		v = v[:64] + "..."
	}
	return fmt.Sprintf("%s: %q is not one of %s", field, v, set)
}

// fakeIsUUID reports whether s is a UUID in its 8-4-4-4-12 hex form.
func fakeIsUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F':
		default:
			return false
		}
	}
	return true
}

func fakeIsZip(s string) bool {
	if len(s) != 5 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// fakeParseTime reads an ISO 8601 time: RFC 3339 with Z or an offset, or
// without an offset (UTC), as Python's isoformat writes it.
func fakeParseTime(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.ParseInLocation("2006-01-02T15:04:05", s, time.UTC)
}

// ---- the in-memory transport ----

// fakeTransport carries a client's requests to a FakeServer in memory.
type fakeTransport struct{ s *FakeServer }

var _ http.RoundTripper = (*fakeTransport)(nil)

// RoundTrip serves req with the server and returns the context's error if
// req's context ends before the handler finishes. It reads and closes req's
// body first, and never changes req.
//
// Only a test's hook can make the handler block past the context's end (a
// Delay ends with it; everything else holds the server's lock briefly and
// never waits), so with a hook set the handler runs on a goroutine of its
// own, on a shallow copy of req carrying the body, and RoundTrip returns as
// soon as the context ends, leaving the goroutine to end when the handler
// does. Without one the handler runs on the caller's goroutine, which saves
// a third of the time of a round trip, and the context is checked when it
// returns.
func (t *fakeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	var tooLarge bool
	if req.Body != nil && req.Body != http.NoBody {
		var err error
		body, tooLarge, err = fakeReadBody(req.Body, req.ContentLength)
		req.Body.Close() // as a RoundTripper must, even on errors
		if err != nil {
			return nil, err
		}
	}
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	x := &fakeExchange{}
	rw := &x.rw
	rw.header = http.Header{}
	if !t.s.hooked.Load() {
		t.s.serve(rw, req, body, tooLarge, nil, false)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	} else if err := t.serveHooked(ctx, rw, req, body, tooLarge); err != nil {
		return nil, err
	}
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	status := "200 OK"
	if rw.status != http.StatusOK {
		status = strconv.Itoa(rw.status) + " " + http.StatusText(rw.status)
	}
	x.resp = http.Response{
		Status: status, StatusCode: rw.status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: rw.header, Body: rw, ContentLength: int64(len(rw.b)),
		Request: req,
	}
	return &x.resp, nil
}

// fakeExchange is one in-memory round trip in a single allocation: the
// response writer and the response, whose body the writer becomes.
type fakeExchange struct {
	rw   fakeResponse
	resp http.Response
}

// serveHooked serves req on a goroutine of its own, for a hook may block,
// and returns as soon as ctx ends. The handler gets a shallow copy of req,
// as a server would have it, with the body in memory.
func (t *fakeTransport) serveHooked(ctx context.Context, rw *fakeResponse, req *http.Request, body []byte, tooLarge bool) error {
	sr := new(http.Request)
	*sr = *req
	sr.Body, sr.GetBody, sr.ContentLength = &fakeBuf{b: body}, nil, int64(len(body))
	sr.Proto, sr.ProtoMajor, sr.ProtoMinor = "HTTP/1.1", 1, 1
	if sr.Host == "" {
		sr.Host = req.URL.Host
	}
	sr.RemoteAddr = "192.0.2.1:1234" // as httptest.NewRequest has it

	done := make(chan struct{})
	var finished bool
	var panicked any
	go func() {
		defer close(done)
		defer func() { panicked = recover() }()
		t.s.serve(rw, sr, body, tooLarge, nil, true)
		finished = true
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if !finished {
		// A net/http server drops the connection of a handler that
		// panics; so does this transport, with an error.
		return fmt.Errorf("apala: FakeServer: handler for %s %s aborted: %v", req.Method, req.URL.Path, panicked)
	}
	return nil
}

// fakeReadBody reads a request body of n bytes (-1 or 0: unknown), up to
// 1 MiB, the most the server takes; tooLarge reports a larger one, of which
// only the start was read.
func fakeReadBody(r io.Reader, n int64) (body []byte, tooLarge bool, err error) {
	const limit = 1 << 20
	size := 512
	if n > 0 && n <= limit {
		size = int(n) + 1 // room for the read that reports io.EOF
	}
	b := make([]byte, 0, size)
	for len(b) <= limit {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		m, rerr := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+m]
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return nil, false, rerr
		}
	}
	if len(b) > limit {
		return b[:limit], true, nil
	}
	return b, false, nil
}

// fakeBuf is a body in memory: a request's for the handler, or an answer's.
type fakeBuf struct {
	b   []byte
	off int
}

func (b *fakeBuf) Read(p []byte) (int, error) {
	if b.off >= len(b.b) {
		return 0, io.EOF
	}
	n := copy(p, b.b[b.off:])
	b.off += n
	return n, nil
}

func (b *fakeBuf) Close() error { return nil }

// fakeResponse is the in-memory http.ResponseWriter of one request, and
// then its response body.
type fakeResponse struct {
	header http.Header
	status int       // 0 until written
	ct     [1]string // the value of a Content-Type that fakeReply sets
	fakeBuf
}

func (w *fakeResponse) Header() http.Header { return w.header }

func (w *fakeResponse) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *fakeResponse) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if len(w.b) == 0 && len(p) > 0 {
		if _, ok := w.header["Content-Type"]; !ok {
			w.header.Set("Content-Type", http.DetectContentType(p)) // as a net/http server does
		}
	}
	w.b = append(w.b, p...)
	return len(p), nil
}
