// This file holds the token lifecycle: the exported token methods and the
// Token they return, how values holding a secret print, the token pair, and
// tokenState, the state that runs at most one token request (a flight) at a
// time, with its lock; then the token stores. It reads top-down: a caller
// asks usablePair for a token; a fresh pair comes back at once, a stale one
// starts refreshSoon, and none waits for a flight in await; fly runs the
// flight (obtain, exchange, refresh) and publishes its result. The HTTP
// round trip the flights send through is in apala.go.

package apala

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// maxLifetime bounds a token lifetime taken from the server, so that an
	// absurd expires_in cannot overflow the arithmetic on deadlines.
	maxLifetime = 10 * 365 * 24 * time.Hour
	minCooldown = time.Second      // after a failed token flight, doubling
	maxCooldown = 30 * time.Second // up to this
	maxRefused  = 16               // access tokens remembered as refused by the server
)

// Token is a snapshot of the access token the client holds, never of the
// refresh token or the API key. fmt, log/slog and encoding/json never show
// the access token; read the AccessToken field to use it.
type Token struct {
	AccessToken string
	TokenType   string
	ExpiresAt   time.Time // when the access token expires; zero: unknown (or no token held)
	CompanyID   string
	CompanyName string

	at time.Time // when the client took the snapshot, by its clock
}

// Valid reports whether a token is held and ExpiresAt is zero or was still
// ahead when the snapshot was taken, by the clock of the client that took
// it (a FakeServer's clock for its clients); for a Token built by hand, now.
func (t Token) Valid() bool {
	at := t.at
	if at.IsZero() {
		at = timeNow()
	}
	return t.AccessToken != "" && (t.ExpiresAt.IsZero() || at.Before(t.ExpiresAt))
}

func (t Token) printable() []slog.Attr {
	return []slog.Attr{
		slog.String("access_token", redact(t.AccessToken)),
		slog.String("token_type", t.TokenType),
		slog.Time("expires_at", t.ExpiresAt),
		slog.String("company_id", t.CompanyID),
		slog.String("company_name", t.CompanyName),
	}
}

// Format implements fmt.Formatter: every verb (%v, %#v, %x, %d, ...)
// prints the token's fields with its value redacted.
func (t Token) Format(f fmt.State, verb rune) { format(f, verb, "apala.Token", t.printable()) }

// MarshalJSON encodes the token's fields with its value redacted, so that a
// Token logged with log/slog, also inside a slice or a map, stays safe.
func (t Token) MarshalJSON() ([]byte, error) { return marshalAttrs(t.printable()) }

// Printing a value that holds a secret: its printable method lists its
// fields, secrets redacted; Format prints the list for every verb of fmt,
// and MarshalJSON encodes it for encoding/json and log/slog (inside slices
// and maps too). StoredToken, whose JSON is real, has LogValue instead.

// redact stands for a secret in printed output: whether one is held, never what.
func redact(s string) string {
	if s == "" {
		return ""
	}
	return "[REDACTED]"
}

// format prints attrs as name{key:value ...} for any verb; %q quotes it.
func format(f fmt.State, verb rune, name string, attrs []slog.Attr) {
	fields := make([]string, len(attrs))
	for i, a := range attrs {
		fields[i] = a.Key + ":" + a.Value.String()
	}
	s := name + "{" + strings.Join(fields, " ") + "}"
	if verb == 'q' {
		s = strconv.Quote(s)
	}
	_, _ = io.WriteString(f, s)
}

// marshalAttrs encodes attrs as a JSON object, in order.
func marshalAttrs(attrs []slog.Attr) ([]byte, error) {
	b := []byte{'{'}
	for _, a := range attrs {
		v, err := json.Marshal(a.Value.Any())
		if err != nil {
			return nil, err
		}
		b = append(append(append(strconv.AppendQuote(b, a.Key), ':'), v...), ',') // keys are plain ASCII
	}
	return append(bytes.TrimSuffix(b, []byte{','}), '}'), nil
}

// AccessToken returns a valid access token, authenticating or refreshing as
// needed: a fresh one for one atomic load and a clock read, one inside the
// refresh margin at once while one refresh runs in the background; else it
// waits for the one token request in flight (starting it), or for ctx to
// end. Most callers never need it: every API call attaches the token itself.
func (c *Client) AccessToken(ctx context.Context) (string, error) {
	if ctx == nil {
		return "", errNilContext
	}
	p, err := c.usablePair(ctx)
	if err != nil {
		return "", err
	}
	return p.access, nil
}

// Token returns a snapshot of the access token held, without any I/O: the
// zero Token when none is held, after a rejection by the server or Close.
func (c *Client) Token() Token { return c.pair.Load().token(c.now()) }

// Authenticate exchanges the API key for a new token pair (POST
// /api/auth/token) and returns the new access token. It always reaches the
// server — joining an exchange already in progress, never taking a token
// from a TokenStore — and ignores the failure cooldown; the server's error
// is returned as is, with the zero Token. Calling it is optional: the first
// API call authenticates by itself.
func (c *Client) Authenticate(ctx context.Context) (Token, error) {
	p, err := c.await(ctx, flightAuth)
	return p.token(c.now()), err
}

// RefreshAccessToken trades the refresh token held for a new access token
// (POST /api/auth/refresh) and returns it. It fails with
// ErrNotAuthenticated, sending nothing, when no refresh token is held.
// Unlike the automatic path, it does not fall back to the API key when the
// server refuses the refresh token: that error is returned as is, and the
// refresh token dropped.
func (c *Client) RefreshAccessToken(ctx context.Context) (Token, error) {
	p, err := c.await(ctx, flightRefresh)
	return p.token(c.now()), err
}

// tokenPair is one immutable generation of credentials. The client holds the
// current one in an atomic.Pointer and replaces it whole; nothing mutates a
// tokenPair once it is published.
type tokenPair struct {
	access      string
	refresh     string
	tokenType   string
	bearer      []string // the Authorization header value, pre-built: {"Bearer " + access}
	forms       []string // secretForms of access and refresh, for scrubbing
	companyID   string
	companyName string
	keyID       string // the fingerprint of the base URL and key it came from, for a TokenStore

	// Deadlines as offsets on the client's monotonic clock (Client.mono).
	// Fresh before staleAt, stale before invalidAt, invalid after.
	// Unknown expiry: both are math.MaxInt64.
	staleAt   time.Duration
	invalidAt time.Duration
	issuedAt  time.Time // when the request that got it was sent, by the token clock
	expiresAt time.Time // zero when unknown
}

// closedPair is stored by Close: it is never usable, so every path that
// reads the pointer falls through to the slow path, which reports ErrClosed.
var closedPair = &tokenPair{staleAt: math.MinInt64, invalidAt: math.MinInt64}

// rejected returns a copy of p whose access token is no longer usable but
// whose refresh token and company are kept, for the refresh that follows.
func (p *tokenPair) rejected() *tokenPair {
	np := *p
	np.access, np.bearer = "", nil
	np.staleAt, np.invalidAt = math.MinInt64, math.MinInt64
	return &np
}

// token is p's exported snapshot, taken at, by the token clock; the zero
// Token for nil or a pair without an access token.
func (p *tokenPair) token(at time.Time) Token {
	if p == nil || p.access == "" {
		return Token{}
	}
	return Token{AccessToken: p.access, TokenType: p.tokenType, ExpiresAt: p.expiresAt.Round(0),
		CompanyID: p.companyID, CompanyName: p.companyName, at: at}
}

// newPair builds a token pair from an answer to a request sent at sent (by
// the token clock), from which its lifetime counts. expiresIn <= 0 means
// unknown: the JWT's exp claim is read, and failing that the token is used
// until the server rejects it.
func (c *Client) newPair(access, refresh, tokenType string, expiresIn int, sent time.Time) *tokenPair {
	var expires time.Time
	if expiresIn > 0 {
		expires = sent.Add(time.Duration(min(int64(expiresIn), int64(maxLifetime/time.Second))) * time.Second)
	} else if exp, ok := jwtExpiry(access); ok && exp.After(sent) {
		expires = sent.Add(min(exp.Sub(sent), maxLifetime))
	}
	return c.makePair(access, refresh, tokenType, sent, expires)
}

// makePair builds a token pair issued and expiring at the times given (zero
// expires: unknown, never stale nor invalid), stale the refresh margin before
// expiry, capped at half its lifetime (uncapped when issued is zero), and
// invalid a leeway of a quarter of that margin, at most 10s, before it.
func (c *Client) makePair(access, refresh, tokenType string, issued, expires time.Time) *tokenPair {
	p := &tokenPair{access: access, refresh: refresh, tokenType: tokenType, bearer: []string{"Bearer " + access},
		issuedAt: issued, expiresAt: expires, staleAt: math.MaxInt64, invalidAt: math.MaxInt64,
		forms: secretForms(access, refresh)}
	if p.tokenType == "" {
		p.tokenType = "Bearer"
	}
	if expires.IsZero() {
		return p
	}
	margin := c.cfg.margin
	if life := expires.Sub(issued); !issued.IsZero() && life > 0 {
		margin = min(margin, life/2)
	}
	leeway := min(margin/4, 10*time.Second)
	end := expires.Sub(c.baseTime)
	p.staleAt, p.invalidAt = end-margin, end-leeway
	return p
}

// seconds reads expires_in leniently: an integer, a float such as 3600.0 (a
// fraction is dropped) or a string holding one, clamped to what an int holds
// on every platform. Anything else is 0, which means unknown: it is never a
// decoding error, whose text would quote what the server sent.
func seconds(raw json.RawMessage) int {
	v := strings.TrimSpace(string(raw))
	if u, err := strconv.Unquote(v); err == nil {
		v = u
	}
	f, err := strconv.ParseFloat(v, 64)
	if (err != nil && !errors.Is(err, strconv.ErrRange)) || math.IsNaN(f) {
		return 0
	}
	return int(min(max(f, math.MinInt32), math.MaxInt32))
}

// jwtExpiry reads the exp claim of a JWT without verifying it: the client only
// needs to know when to refresh, and the server remains the judge.
func jwtExpiry(tok string) (time.Time, bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	var claims struct{ Exp *float64 } // encoding/json matches "exp" to Exp
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil || json.Unmarshal(payload, &claims) != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	exp := *claims.Exp
	if math.IsNaN(exp) || exp <= 0 || exp > 1e11 {
		return time.Time{}, false
	}
	sec, frac := math.Modf(exp)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

// validToken reports whether s can travel in an Authorization header: visible
// ASCII only, so a hostile answer cannot inject a header or a line break.
func validToken(s string) bool {
	invisible := func(r rune) bool { return r <= ' ' || r >= 0x7f }
	return s != "" && len(s) <= 16<<10 && !strings.ContainsFunc(s, invisible)
}

// tokenState is the token lifecycle's state, embedded in Client and touched
// only by the methods in this file.
type tokenState struct {
	// pair is the current token pair; read without a lock, replaced whole.
	pair atomic.Pointer[tokenPair]
	// flight is the token request in progress, nil when none; written
	// under mu, read without it.
	flight atomic.Pointer[flight]
	// cooldownUntil is the time (Client.elapsed) before which no automatic
	// flight starts after a failure; written under mu, read without it.
	cooldownUntil atomic.Int64
	// closed is set by Close, under mu, which then closes closing to end every wait.
	closed  atomic.Bool
	closing chan struct{}
	// keys, those WithAPIKeyFunc's function returned, scrubbed from server
	// text, are replaced whole under mu, read without it; lastKey is the latest.
	keys    atomic.Pointer[[]string]
	lastKey atomic.Pointer[string]

	// mu guards cooldown, lastErr and refused, and serialises the start and
	// the end of flights with Close.
	mu       sync.Mutex
	cooldown time.Duration // the current failure cooldown; 0 after a success
	lastErr  error         // the error of the last failed flight
	refused  []string      // the last access tokens the server refused, never adopted from a store again

	wg sync.WaitGroup // the flights' goroutines, their hooks included
}

// Kinds of token flight.
type flightKind uint8

const (
	flightAuto    flightKind = iota // refresh if possible, else (or when refused) exchange the API key
	flightAuth                      // Authenticate: exchange the API key
	flightRefresh                   // RefreshAccessToken: refresh only, no fall-back
)

// flight is one token request in progress. Its result fields are written
// once, before done is closed, and only read after.
type flight struct {
	kind    flightKind
	done    chan struct{}
	cancel  context.CancelFunc // ends the flight's requests; called by Close
	pair    *tokenPair
	err     error
	reports []func() // the hooks' reports about it, in order; called by fly once it ended
}

// mono and elapsed are the time since construction on the token clock and
// on the real one (for the cooldown): monotonic readings.
func (c *Client) mono() time.Duration    { return c.since(c.baseTime) }
func (c *Client) elapsed() time.Duration { return c.waited(c.baseTime) }

// useClock makes c judge token lifetimes by now instead of the real clock:
// a FakeServer gives its clients its own clock. Call it before c is shared.
func (c *Client) useClock(now func() time.Time) {
	real := c.baseTime
	c.now = now
	c.since = func(t time.Time) time.Duration { return now().Sub(t) }
	c.waited = func(time.Time) time.Duration { return timeSince(real) }
	c.baseTime = now()
}

// usablePair returns a usable token pair; when one is held, with one atomic
// load and one clock read, no lock, no allocation.
func (c *Client) usablePair(ctx context.Context) (*tokenPair, error) {
	if p := c.pair.Load(); p != nil {
		now := c.mono()
		if now < p.staleAt {
			return p, nil
		}
		if now < p.invalidAt {
			c.refreshSoon(ctx)
			return p, nil
		}
	}
	return c.await(ctx, flightAuto)
}

// refreshSoon starts a background refresh unless one is running or a failure
// cooldown is in force. Checked without a lock, so that callers inside the
// stale window never contend: at most one of them takes the lock to start it.
func (c *Client) refreshSoon(ctx context.Context) {
	if c.flight.Load() != nil || c.coolingDown() || ctx.Err() != nil {
		return // a done context starts nothing
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed.Load() && c.flight.Load() == nil && !c.coolingDown() {
		c.launch(ctx, flightAuto)
	}
}

func (c *Client) coolingDown() bool { return c.elapsed() < time.Duration(c.cooldownUntil.Load()) }

// await is the slow path and the explicit calls. For flightAuto it returns
// a usable pair, held or from the flight it joins or starts; an explicit
// kind joins only a flight of its own kind, waits out another, and ignores
// the cooldown. Every waiter shares its flight's error but one: a caller
// needing a token that waited on an explicit refresh the server refused
// goes on to exchange the API key, as the automatic path would.
func (c *Client) await(ctx context.Context, kind flightKind) (*tokenPair, error) {
	if ctx == nil {
		return nil, errNilContext
	}
	for {
		c.mu.Lock()
		p, f := c.pair.Load(), c.flight.Load()
		var err error
		switch {
		case c.closed.Load():
			err = ErrClosed
		case kind == flightAuto && p != nil && c.mono() < p.invalidAt: // usable: fresh or stale
			c.mu.Unlock()
			return p, nil
		case ctx.Err() != nil:
			err = fmt.Errorf("apala: waiting for an access token: %w", ctx.Err())
		case f != nil:
		case kind == flightAuto && c.coolingDown():
			until := c.now().Add(time.Duration(c.cooldownUntil.Load()) - c.elapsed())
			err = &cachedError{err: c.lastErr, until: until}
		case kind == flightRefresh && (p == nil || p.refresh == ""):
			err = ErrNotAuthenticated
		default:
			f = c.launch(ctx, kind)
		}
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("apala: waiting for an access token: %w", ctx.Err())
		case <-c.closing:
			return nil, ErrClosed
		}
		switch {
		case kind != flightAuto && f.kind != kind:
			continue
		case f.err == nil:
			return f.pair, nil
		case kind == flightAuto && f.kind == flightRefresh && refused(f.err):
			continue
		}
		return nil, f.err
	}
}

// refused reports whether err is the server refusing a token request's
// credentials (400, 401, 403), as opposed to a transient failure.
func refused(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && (ae.StatusCode == 400 || ae.StatusCode == 401 || ae.StatusCode == 403)
}

// cachedError is the error of the last failed flight, served again during
// the cooldown: it matches what the original did, and says it is cached.
type cachedError struct {
	err   error
	until time.Time // when the cooldown ends
}

func (e *cachedError) Error() string {
	return e.err.Error() + " (cached: no new token request until " + e.until.UTC().Format(time.RFC3339) + ")"
}

func (e *cachedError) Unwrap() error { return e.err }

// launch starts a flight for the caller whose context is ctx, with c.mu
// held and no flight in progress. The flight keeps ctx's values (a trace, a
// logger) but not its cancellation, so that no caller can end it for the
// others; Close cancels it through f.cancel.
func (c *Client) launch(ctx context.Context, kind flightKind) *flight {
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &flight{kind: kind, done: make(chan struct{}), cancel: cancel}
	c.flight.Store(f)
	c.wg.Add(1)
	go c.fly(fctx, f)
	return f
}

// fly runs flight f, publishes its result, and then makes the hooks'
// reports about it. Every failed flight starts the cooldown, but an
// explicit refresh the server refused: that only drops the refresh token,
// so that the automatic path may still fall back to the API key.
func (c *Client) fly(ctx context.Context, f *flight) {
	defer c.wg.Done()
	defer f.cancel()
	old := c.pair.Load()
	if f.kind == flightAuto {
		// Adopting needs no lock: only a token request does.
		f.pair = c.adopt(ctx, old)
	}
	if f.pair == nil {
		unlock, locked := c.lockStore(ctx)
		if f.kind == flightAuto && locked {
			// The lock's last holder may have just saved a token.
			f.pair = c.adopt(ctx, old)
		}
		if f.pair == nil {
			switch f.kind {
			case flightAuth:
				f.pair, f.err = c.exchange(ctx, f)
			case flightRefresh:
				f.pair, f.err = c.refresh(ctx, f, old)
			default:
				f.pair, f.err = c.obtain(ctx, f, old)
			}
			if f.err == nil {
				c.save(ctx, f.pair)
			}
		}
		unlock()
	}
	var cooldown time.Duration
	c.mu.Lock()
	switch {
	case c.closed.Load():
		f.pair, f.err = nil, ErrClosed
	case f.err == nil:
		c.pair.Store(f.pair)
		c.cooldown, c.lastErr = 0, nil
		c.cooldownUntil.Store(0)
	case f.kind == flightRefresh && refused(f.err):
		c.dropRefresh(old.refresh)
	default:
		c.cooldown = min(max(2*c.cooldown, minCooldown), maxCooldown)
		cooldown = c.cooldown
		c.cooldownUntil.Store(int64(c.elapsed() + c.cooldown))
		c.lastErr = f.err
	}
	c.flight.Store(nil)
	c.mu.Unlock()
	close(f.done)
	if f.err != nil && f.kind == flightAuto && !errors.Is(f.err, ErrClosed) {
		c.logAttrs(ctx, slog.LevelWarn, "apala: token request failed",
			slog.String("error", f.err.Error()), slog.Duration("cooldown", cooldown))
	}
	for _, report := range f.reports {
		report()
	}
}

// dropRefresh removes the refresh token the server refused from the pair
// held, also from its rejected copy a 401 may have put in its place.
func (c *Client) dropRefresh(refresh string) {
	for {
		p := c.pair.Load()
		if p == nil || p.refresh != refresh {
			return
		}
		np := *p
		np.refresh = ""
		if c.pair.CompareAndSwap(p, &np) {
			return
		}
	}
}

// obtain is the automatic path: refresh when a refresh token is held, and
// exchange the API key when there is none or the server refuses it.
func (c *Client) obtain(ctx context.Context, f *flight, old *tokenPair) (*tokenPair, error) {
	if old != nil && old.refresh != "" {
		np, err := c.refresh(ctx, f, old)
		if err == nil || !refused(err) {
			return np, err
		}
		var ae *APIError
		errors.As(err, &ae)
		c.logAttrs(ctx, slog.LevelWarn, "apala: refresh refused; exchanging the API key",
			slog.Int("status", ae.StatusCode))
	}
	return c.exchange(ctx, f)
}

// tokenAnswer is the answer of both token endpoints.
type tokenAnswer struct {
	AccessToken  string          `json:"access_token"`
	RefreshToken string          `json:"refresh_token"`
	TokenType    string          `json:"token_type"`
	ExpiresIn    json.RawMessage `json:"expires_in"` // read leniently by seconds
	CompanyID    string          `json:"company_id"`
	CompanyName  string          `json:"company_name"`
}

// tokenRequest sends a token request of f and builds the pair of its
// answer, its text scrubbed of every secret, the new tokens' included;
// refresh is the refresh token to keep when the answer carries none.
func (c *Client) tokenRequest(ctx context.Context, f *flight, path string, body []byte, secrets []string, refresh string) (p *tokenPair, err error) {
	start := time.Now()
	defer func() {
		if hook := c.cfg.hooks.Token; hook != nil {
			t := TokenInfo{Refresh: path == pathRefresh, Duration: time.Since(start), Err: err}
			if err == nil {
				t.Token = p.token(c.now())
			}
			f.reports = append(f.reports, func() { hook(ctx, t) })
		}
	}()
	rq := newRequest(http.MethodPost, path, false)
	rq.body, rq.secrets, rq.flight, rq.cfg = body, secrets, f, &c.cfg
	var a tokenAnswer
	sent, err := c.send(ctx, &rq, &a)
	if err != nil {
		return nil, err
	}
	if !validToken(a.AccessToken) {
		return nil, rq.errorf(nil, "response has no valid access_token")
	}
	if a.RefreshToken != "" {
		if !validToken(a.RefreshToken) {
			return nil, rq.errorf(nil, "response has a malformed refresh_token")
		}
		refresh = a.RefreshToken
	}
	p = c.newPair(a.AccessToken, refresh, a.TokenType, seconds(a.ExpiresIn), sent)
	clean := c.scrubber(secrets, p.forms...)
	p.tokenType, p.companyID, p.companyName = clean(p.tokenType), clean(a.CompanyID), clean(a.CompanyName)
	return p, nil
}

// tokenBody is the JSON body of a token request: one string field.
func tokenBody(field, value string) []byte {
	b, _ := json.Marshal(map[string]string{field: value}) // a map of strings always marshals
	return b
}

// exchange trades the API key for a token pair (POST /api/auth/token). With
// WithAPIKeyFunc the key is asked for now, and once more after a 401: a key
// rotated meanwhile gets one more try.
func (c *Client) exchange(ctx context.Context, f *flight) (*tokenPair, error) {
	key, err := c.key(ctx)
	if err != nil {
		return nil, err
	}
	p, err := c.exchangeKey(ctx, f, key)
	if c.cfg.keyFunc != nil && errors.Is(err, ErrUnauthorized) {
		if next, kerr := c.key(ctx); kerr == nil && next != key {
			p, err = c.exchangeKey(ctx, f, next)
		}
	}
	return p, err
}

// key returns the API key for an exchange: the one NewClient was given, or
// what WithAPIKeyFunc's function returns now, remembered for scrubbing.
func (c *Client) key(ctx context.Context) (string, error) {
	fn := c.cfg.keyFunc
	if fn == nil {
		return c.apiKey, nil
	}
	k, err := bounded(ctx, fn, nil) // Close ends the wait for a function that ignores ctx
	switch {
	case err != nil:
		return "", fmt.Errorf("apala: API key: %w", c.scrubErr(err, nil))
	case k == "":
		return "", fmt.Errorf("%w: WithAPIKeyFunc returned an empty key", ErrMissingAPIKey)
	}
	c.remember(k)
	c.lastKey.Store(&k)
	return k, nil
}

// remember adds k to the keys scrubbed from server text.
func (c *Client) remember(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ks []string
	if old := c.keys.Load(); old != nil {
		if slices.Contains(*old, k) {
			return
		}
		ks = append(ks, *old...)
	}
	ks = append(ks, k)
	c.keys.Store(&ks)
}

// exchangeKey trades key for a token pair.
func (c *Client) exchangeKey(ctx context.Context, f *flight, key string) (*tokenPair, error) {
	p, err := c.tokenRequest(ctx, f, pathToken, tokenBody("api_key", key), []string{key}, "")
	if err != nil {
		return nil, err
	}
	p.keyID = c.keyID(key)
	c.logAttrs(ctx, slog.LevelInfo, "apala: authenticated",
		slog.String("company_id", p.companyID), slog.String("company_name", p.companyName),
		slog.Duration("expires_in", lifetime(p)))
	return p, nil
}

// refresh trades the refresh token of old for a new access token (POST
// /api/auth/refresh), keeping it unless the server rotates it.
func (c *Client) refresh(ctx context.Context, f *flight, old *tokenPair) (*tokenPair, error) {
	if old == nil || old.refresh == "" {
		return nil, ErrNotAuthenticated
	}
	body := tokenBody("refresh_token", old.refresh)
	p, err := c.tokenRequest(ctx, f, pathRefresh, body, []string{old.access, old.refresh}, old.refresh)
	if err != nil {
		return nil, err
	}
	p.companyID, p.companyName, p.keyID = old.companyID, old.companyName, old.keyID
	c.logAttrs(ctx, slog.LevelInfo, "apala: token refreshed", slog.Duration("expires_in", lifetime(p)))
	return p, nil
}

// lifetime is how long p lives from when it was issued; 0 when unknown.
func lifetime(p *tokenPair) time.Duration {
	if p.expiresAt.IsZero() {
		return 0
	}
	return p.expiresAt.Sub(p.issuedAt)
}

// reject invalidates p, which the server refused, unless a newer pair has
// replaced it meanwhile, and remembers that the server refused it.
func (c *Client) reject(p *tokenPair) {
	c.pair.CompareAndSwap(p, p.rejected())
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.refused) == maxRefused {
		c.refused = c.refused[1:]
	}
	c.refused = append(c.refused, p.access)
}

// wasRefused reports whether the server refused the access token tok.
func (c *Client) wasRefused(tok string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(c.refused, tok)
}

// TokenStore keeps a token where other clients, in this process or in
// others, find it, so that short-lived processes and many processes on one
// host make one token request per token lifetime between them. Give one to
// a client with WithTokenStore; NewFileTokenStore makes one backed by a
// file. A store shared by processes on several machines (Redis, a database)
// is a few lines of the user's code. It is a cache: its failures cost at
// most a token request, never a call. It may also implement TokenLocker.
type TokenStore interface {
	// Load returns the stored token, or nil, nil when none is stored.
	Load(ctx context.Context) (*StoredToken, error)
	// Save stores t, replacing what was stored.
	Save(ctx context.Context, t *StoredToken) error
}

// TokenLocker is implemented by a TokenStore that serialises token requests
// across processes: a client about to make a token request takes the lock,
// loads the store again, and releases the lock once its result is saved, so
// that N processes racing for a token make one request and the others adopt
// it. Lock waits until the lock is held or ctx ends; unlock releases it.
type TokenLocker interface {
	Lock(ctx context.Context) (unlock func(), err error)
}

// StoredToken is a token pair as a TokenStore keeps it, never with the API
// key. fmt and log/slog print it redacted, but encoding/json gives its real
// fields, so that a store can encode it.
type StoredToken struct {
	AccessToken  string    `json:"access_token"`
	RefreshToken string    `json:"refresh_token"`
	TokenType    string    `json:"token_type"`
	IssuedAt     time.Time `json:"issued_at"`  // when the token request was sent; zero: unknown
	ExpiresAt    time.Time `json:"expires_at"` // zero: unknown, and never adopted
	CompanyID    string    `json:"company_id"`
	CompanyName  string    `json:"company_name"`
	// KeyID is the fingerprint of the base URL and the API key the token
	// came from, set by the client: a hash of both, which cannot be turned
	// back into the key. A client adopts only a token of its own.
	KeyID string `json:"key_id"`
}

func (t StoredToken) printable() []slog.Attr {
	return []slog.Attr{
		slog.String("access_token", redact(t.AccessToken)),
		slog.String("refresh_token", redact(t.RefreshToken)),
		slog.String("token_type", t.TokenType),
		slog.Time("issued_at", t.IssuedAt),
		slog.Time("expires_at", t.ExpiresAt),
		slog.String("company_id", t.CompanyID),
		slog.String("company_name", t.CompanyName),
		slog.String("key_id", t.KeyID),
	}
}

// Format implements fmt.Formatter: every verb prints the tokens redacted.
func (t StoredToken) Format(f fmt.State, verb rune) {
	format(f, verb, "apala.StoredToken", t.printable())
}

// LogValue implements slog.LogValuer, leaving the tokens out.
func (t StoredToken) LogValue() slog.Value { return slog.GroupValue(t.printable()...) }

// keyID is the fingerprint of the client's base URL and key.
func (c *Client) keyID(key string) string {
	h := sha256.Sum256([]byte("apala-go token store\x00" + c.baseStr + "\x00" + key))
	return hex.EncodeToString(h[:16])
}

// currentKeyID is the fingerprint of the key the client uses now: the one
// NewClient was given, or the latest from WithAPIKeyFunc's function, asked
// for if it never was.
func (c *Client) currentKeyID(ctx context.Context) (string, error) {
	if c.cfg.keyFunc == nil {
		return c.keyID(c.apiKey), nil
	}
	if k := c.lastKey.Load(); k != nil {
		return c.keyID(*k), nil
	}
	k, err := c.key(ctx)
	if err != nil {
		return "", err
	}
	return c.keyID(k), nil
}

// storeTimeout bounds each use of a TokenStore (lock, load, save); longer
// than the file store's takeover bound, so that a crashed holder's lock is
// taken over rather than given up on. Tests shorten it.
var storeTimeout = 15 * time.Second

// bounded runs op, a call into user code (a store, the key function), for
// at most storeTimeout, even when op ignores its context: then it is
// abandoned, its goroutine left to end when op returns (the one goroutine of
// a client that may outlive Close), and undo is given what op returns late.
func bounded[T any](ctx context.Context, op func(context.Context) (T, error), undo func(T)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := op(ctx)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		if undo != nil {
			go func() { undo((<-done).v) }()
		}
		var zero T
		return zero, fmt.Errorf("no answer: %w", ctx.Err())
	}
}

// lockStore takes the store's lock when it is a TokenLocker, and returns
// what releases it and whether it is held; without it, the request goes on.
func (c *Client) lockStore(ctx context.Context) (unlock func(), locked bool) {
	l, ok := c.cfg.store.(TokenLocker)
	if !ok {
		return func() {}, false
	}
	release, err := bounded(ctx, l.Lock, func(release func()) {
		if release != nil {
			release()
		}
	})
	if err != nil || release == nil {
		c.storeFailed(ctx, "lock", err)
		return func() {}, false
	}
	return release, true
}

// adopt loads the store and returns a pair of the token there if it came
// from this client's base URL and key, was never refused to it, is newer
// than old, and is fresh by the margin the client would apply; else nil.
func (c *Client) adopt(ctx context.Context, old *tokenPair) *tokenPair {
	if c.cfg.store == nil {
		return nil
	}
	st, err := bounded(ctx, c.cfg.store.Load, nil)
	if err != nil {
		c.storeFailed(ctx, "load", err)
		return nil
	}
	if st == nil || st.ExpiresAt.IsZero() || !validToken(st.AccessToken) || (st.RefreshToken != "" && !validToken(st.RefreshToken)) {
		return nil
	}
	if id, err := c.currentKeyID(ctx); err != nil || st.KeyID != id || c.wasRefused(st.AccessToken) {
		return nil
	}
	if old != nil && old.access != "" && (st.AccessToken == old.access || !st.ExpiresAt.After(old.expiresAt)) {
		return nil
	}
	p := c.makePair(st.AccessToken, st.RefreshToken, st.TokenType, st.IssuedAt, st.ExpiresAt)
	clean := c.scrubber(nil, p.forms...)
	p.tokenType, p.companyID, p.companyName, p.keyID = clean(p.tokenType), clean(st.CompanyID), clean(st.CompanyName), st.KeyID
	if c.mono() >= p.staleAt {
		return nil
	}
	c.logAttrs(ctx, slog.LevelInfo, "apala: token taken from the store",
		slog.String("company_id", p.companyID), slog.Duration("expires_in", st.ExpiresAt.Sub(c.now())))
	return p
}

// save stores p, when the client has a store.
func (c *Client) save(ctx context.Context, p *tokenPair) {
	if c.cfg.store == nil {
		return
	}
	st := &StoredToken{
		AccessToken: p.access, RefreshToken: p.refresh, TokenType: p.tokenType,
		IssuedAt: p.issuedAt.Round(0), ExpiresAt: p.expiresAt.Round(0),
		CompanyID: p.companyID, CompanyName: p.companyName, KeyID: p.keyID,
	}
	_, err := bounded(ctx, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, c.cfg.store.Save(ctx, st)
	}, nil)
	if err != nil {
		c.storeFailed(ctx, "save", err, p.access, p.refresh)
	}
}

// storeFailed logs a failure of the store at Warn, scrubbed of the client's
// secrets and of those it gave the store, which the client may not hold.
func (c *Client) storeFailed(ctx context.Context, op string, err error, secrets ...string) {
	msg := "<nil>"
	if err != nil {
		msg = c.scrubber(secrets)(err.Error())
	}
	c.logAttrs(ctx, slog.LevelWarn, "apala: token store failed; going on without it",
		slog.String("op", op), slog.String("error", msg))
}

// NewFileTokenStore returns a TokenStore keeping the token in one JSON file
// at path, mode 0600, written by an atomic rename. It is also a TokenLocker,
// with a lock file beside it (path + ".lock", created with O_EXCL), taken
// over when older than 10 seconds, so that a crashed holder blocks nobody
// for long. A file that holds no token of this package is ignored and
// overwritten. The tokens are stored, so keep the file where only the
// service's user reads it. On js/wasm its methods return errors.
func NewFileTokenStore(path string) TokenStore { return &fileStore{path: path} }

// fileLockStale is the age at which a lock file is taken over; tests shorten it.
var fileLockStale = 10 * time.Second

// fileStore is NewFileTokenStore's; it checks its context between its steps.
type fileStore struct{ path string }

var _ TokenLocker = (*fileStore)(nil)

// fileToken is the file's content: a StoredToken marked with the format's
// version, so that a foreign file is told apart.
type fileToken struct {
	Version int         `json:"apala_token_store"`
	Token   StoredToken `json:"token"`
}

// Load implements TokenStore.
func (s *fileStore) Load(ctx context.Context) (*StoredToken, error) {
	// Only a regular file, read with a bound: a FIFO or a device at the
	// path would block or never end.
	fi, err := os.Stat(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil
	case err == nil && !fi.Mode().IsRegular():
		err = errors.New("not a regular file")
	case err == nil:
		err = ctx.Err()
	}
	var b []byte
	if err == nil {
		var f *os.File
		if f, err = os.Open(s.path); err == nil {
			b, err = io.ReadAll(io.LimitReader(f, 64<<10+1))
			f.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("apala: token store: %s: %w", s.path, err)
	}
	var f fileToken
	if len(b) > 64<<10 || json.Unmarshal(b, &f) != nil || f.Version != 1 {
		return nil, fmt.Errorf("apala: token store: %s holds no token of this package; it will be overwritten", s.path)
	}
	return &f.Token, nil
}

// Save implements TokenStore.
func (s *fileStore) Save(ctx context.Context, t *StoredToken) error {
	b, err := json.Marshal(fileToken{Version: 1, Token: *t})
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("apala: token store: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.path), filepath.Base(s.path)+".tmp-*") // mode 0600
	if err != nil {
		return fmt.Errorf("apala: token store: %w", err)
	}
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		err = os.Rename(tmp.Name(), s.path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("apala: token store: %w", err)
	}
	return nil
}

// Lock implements TokenLocker with a lock file. One older than
// fileLockStale (or dated that far in the future), not a regular file (a
// dangling symlink), or unreadable by Lstat is stale and taken over; one
// that cannot be removed is an error at once. Two processes taking one over
// at once may both hold it: one more token request, never a failed call.
func (s *fileStore) Lock(ctx context.Context) (func(), error) {
	if ctx == nil {
		return nil, errNilContext
	}
	name := s.path + ".lock"
	id, err := newID()
	if err != nil {
		return nil, err
	}
	me := strconv.Itoa(os.Getpid()) + " " + id
	wait := 2 * time.Millisecond
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("apala: token store lock: %w", err)
		}
		f, err := os.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err == nil {
			_, err = f.WriteString(me)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				os.Remove(name)
				return nil, fmt.Errorf("apala: token store lock: %w", err)
			}
			return func() {
				// Not a lock taken over meanwhile by another process.
				if b, err := os.ReadFile(name); err == nil && string(b) == me {
					os.Remove(name)
				}
			}, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("apala: token store lock: %w", err)
		}
		fi, err := os.Lstat(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // released meanwhile
		}
		if err == nil && fi.Mode().IsRegular() {
			if age := time.Since(fi.ModTime()); age <= fileLockStale && age >= -fileLockStale {
				if err := sleep(ctx, wait, nil); err != nil {
					return nil, fmt.Errorf("apala: token store lock: %w", err)
				}
				wait = min(2*wait, 50*time.Millisecond)
				continue
			}
		}
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("apala: token store lock: taking over a stale lock: %w", err)
		}
	}
}
