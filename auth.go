// This file holds the token lifecycle: the exported token methods and the
// types they return, how those types print without their secrets, the token
// pair, and tokenState, the state that runs at most one token request (a
// flight) at a time, with its lock. It reads top-down: a caller asks
// usablePair for a token; a fresh pair comes back at once, a stale one
// starts refreshSoon, and none waits for a flight in waitToken; fly runs the
// flight (obtain, exchange, refresh) and publishes its result. The HTTP
// round trip the flights send through is in apala.go.

package apala

import (
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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxLifetime bounds a token lifetime taken from the server, so that an absurd
// expires_in cannot overflow the arithmetic on deadlines.
const maxLifetime = 10 * 365 * 24 * time.Hour

// Cooldown after a failed automatic token flight: 1s doubling to 30s.
const (
	minCooldown = time.Second
	maxCooldown = 30 * time.Second
)

// Token is a snapshot of the access token the client holds. It never holds
// the refresh token or the API key.
//
// Formatting a Token with fmt, logging it with log/slog or encoding it with
// encoding/json never shows the access token; read the AccessToken field to
// use it.
type Token struct {
	AccessToken string
	TokenType   string
	ExpiresAt   time.Time // when the access token expires; zero: unknown (or no token held)
	CompanyID   string
	CompanyName string
}

// Valid reports whether a token is held and ExpiresAt is zero or still ahead.
func (t Token) Valid() bool {
	return t.AccessToken != "" && (t.ExpiresAt.IsZero() || timeNow().Before(t.ExpiresAt))
}

// AccessToken returns a valid access token, authenticating or refreshing as
// needed. When the token held is fresh it costs one atomic load and a clock
// read; inside the refresh margin it is returned at once while one refresh
// runs in the background; when none is held or it has expired, the call waits
// for the one token request in flight (or starts it), or for ctx to end.
//
// Most callers never need it: every API call attaches the token itself.
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

// Token returns a snapshot of the access token held, without any I/O. It is
// the zero Token when none is held, after a rejection by the server, and
// after Close.
func (c *Client) Token() Token { return c.pair.Load().token() }

// Authenticate exchanges the API key for a new token pair (POST
// /api/auth/token) and returns the server's answer. It always reaches the
// server — joining an exchange already in progress — and ignores the
// failure cooldown; the server's error is returned as is.
//
// Calling it is optional: the first API call authenticates by itself.
func (c *Client) Authenticate(ctx context.Context) (*AuthResponse, error) {
	f, err := c.requestToken(ctx, flightAuth)
	if err != nil {
		return nil, err
	}
	if f.err != nil {
		return nil, f.err
	}
	resp := *f.auth
	return &resp, nil
}

// RefreshAccessToken trades the refresh token held for a new access token
// (POST /api/auth/refresh) and returns the server's answer. It fails with
// ErrNotAuthenticated, sending nothing, when no refresh token is held.
//
// Unlike the automatic path, it does not fall back to the API key when the
// server refuses the refresh token: that error is returned as is.
func (c *Client) RefreshAccessToken(ctx context.Context) (*RefreshResponse, error) {
	f, err := c.requestToken(ctx, flightRefresh)
	if err != nil {
		return nil, err
	}
	if f.err != nil {
		return nil, f.err
	}
	resp := *f.refresh
	return &resp, nil
}

// printable lists t's fields for printing, the access token redacted.
func (t Token) printable() []slog.Attr {
	return []slog.Attr{
		slog.String("access_token", redact(t.AccessToken)),
		slog.String("token_type", t.TokenType),
		slog.Time("expires_at", t.ExpiresAt),
		slog.String("company_id", t.CompanyID),
		slog.String("company_name", t.CompanyName),
	}
}

// String describes the token without its value.
func (t Token) String() string { return describe("apala.Token", t.printable()) }

// GoString is String, for code that asks for it by name; fmt's %#v goes
// through Format.
func (t Token) GoString() string { return t.String() }

// Format implements fmt.Formatter: every verb (%v, %#v, %x, %d, ...)
// prints String, so none can print the token's value.
func (t Token) Format(f fmt.State, verb rune) { formatRedacted(f, verb, t.String()) }

// LogValue implements slog.LogValuer, leaving the token's value out.
func (t Token) LogValue() slog.Value { return slog.GroupValue(t.printable()...) }

// MarshalJSON encodes the token's description, its value redacted, so that
// a Token inside a slice or map logged with slog's JSON handler stays safe.
func (t Token) MarshalJSON() ([]byte, error) { return marshalAttrs(t.printable()) }

// AuthResponse is the server's answer to an API-key exchange
// (POST /api/auth/token). Formatting, logging or JSON-encoding it never
// shows the tokens; read the fields to use them.
type AuthResponse struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int    `json:"expires_in"`
	CompanyID    string `json:"company_id"`
	CompanyName  string `json:"company_name"`
}

// printable lists r's fields for printing, the tokens redacted.
func (r AuthResponse) printable() []slog.Attr {
	return []slog.Attr{
		slog.String("access_token", redact(r.AccessToken)),
		slog.String("refresh_token", redact(r.RefreshToken)),
		slog.String("token_type", r.TokenType),
		slog.Int("expires_in", r.ExpiresIn),
		slog.String("company_id", r.CompanyID),
		slog.String("company_name", r.CompanyName),
	}
}

// String describes the response without its tokens.
func (r AuthResponse) String() string { return describe("apala.AuthResponse", r.printable()) }

// GoString is String, for code that asks for it by name; fmt's %#v goes
// through Format.
func (r AuthResponse) GoString() string { return r.String() }

// Format implements fmt.Formatter: every verb prints String.
func (r AuthResponse) Format(f fmt.State, verb rune) { formatRedacted(f, verb, r.String()) }

// LogValue implements slog.LogValuer, leaving the tokens out.
func (r AuthResponse) LogValue() slog.Value { return slog.GroupValue(r.printable()...) }

// MarshalJSON encodes the response with its tokens redacted.
func (r AuthResponse) MarshalJSON() ([]byte, error) { return marshalAttrs(r.printable()) }

// RefreshResponse is the server's answer to a refresh (POST
// /api/auth/refresh). Formatting, logging or JSON-encoding it never shows
// the token; read the fields to use it.
type RefreshResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
}

// printable lists r's fields for printing, the token redacted.
func (r RefreshResponse) printable() []slog.Attr {
	return []slog.Attr{
		slog.String("access_token", redact(r.AccessToken)),
		slog.String("token_type", r.TokenType),
		slog.Int("expires_in", r.ExpiresIn),
	}
}

// String describes the response without its token.
func (r RefreshResponse) String() string { return describe("apala.RefreshResponse", r.printable()) }

// GoString is String, for code that asks for it by name; fmt's %#v goes
// through Format.
func (r RefreshResponse) GoString() string { return r.String() }

// Format implements fmt.Formatter: every verb prints String.
func (r RefreshResponse) Format(f fmt.State, verb rune) { formatRedacted(f, verb, r.String()) }

// LogValue implements slog.LogValuer, leaving the token out.
func (r RefreshResponse) LogValue() slog.Value { return slog.GroupValue(r.printable()...) }

// MarshalJSON encodes the response with its token redacted.
func (r RefreshResponse) MarshalJSON() ([]byte, error) { return marshalAttrs(r.printable()) }

// Printing a value that holds a secret: its type lists its fields once,
// secrets redacted, in a printable method, and String, Format, LogValue and
// MarshalJSON all print that list. So no route through fmt, log/slog or
// encoding/json shows a secret, a value nested in a slice or a map included
// (slog's handlers print those with fmt or encoding/json).

// redact stands for a secret in printed output: whether one is held, never what.
func redact(s string) string {
	if s == "" {
		return ""
	}
	return "[REDACTED]"
}

// describe prints attrs as name{key:value ...}.
func describe(name string, attrs []slog.Attr) string {
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i, a := range attrs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(a.Key)
		b.WriteByte(':')
		b.WriteString(a.Value.String())
	}
	b.WriteByte('}')
	return b.String()
}

// marshalAttrs encodes attrs as a JSON object, in order.
func marshalAttrs(attrs []slog.Attr) ([]byte, error) {
	b := []byte{'{'}
	for i, a := range attrs {
		if i > 0 {
			b = append(b, ',')
		}
		k, err := json.Marshal(a.Key)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(a.Value.Any())
		if err != nil {
			return nil, err
		}
		b = append(append(append(b, k...), ':'), v...)
	}
	return append(b, '}'), nil
}

// formatRedacted prints the redacted description s for any verb; %q quotes it.
func formatRedacted(f fmt.State, verb rune, s string) {
	if verb == 'q' {
		s = strconv.Quote(s)
	}
	_, _ = io.WriteString(f, s)
}

// tokenPair is one immutable generation of credentials. The client holds the
// current one in an atomic.Pointer and replaces it whole; nothing mutates a
// tokenPair once it is published.
type tokenPair struct {
	access    string
	refresh   string
	tokenType string
	bearer    []string // the Authorization header value, pre-built: {"Bearer " + access}

	companyID   string
	companyName string
	keyID       string // the fingerprint of the base URL and key it came from, for a TokenStore
	refused     string // in a rejected pair: the access token the server refused

	// Deadlines as offsets on the client's monotonic clock (Client.mono).
	// Fresh before staleAt, stale before invalidAt, invalid after.
	// Unknown expiry: both are math.MaxInt64.
	staleAt   time.Duration
	invalidAt time.Duration
	expiresAt time.Time // wall-clock expiry for Token; zero when unknown
}

// closedPair is stored by Close: it is never usable, so every path that
// reads the pointer falls through to the slow path, which reports ErrClosed.
var closedPair = &tokenPair{staleAt: math.MinInt64, invalidAt: math.MinInt64}

// rejected returns a copy of p whose access token is no longer usable but
// whose refresh token and company are kept, for the refresh that follows.
func (p *tokenPair) rejected() *tokenPair {
	return &tokenPair{
		refresh:     p.refresh,
		companyID:   p.companyID,
		companyName: p.companyName,
		keyID:       p.keyID,
		refused:     p.access,
		expiresAt:   p.expiresAt,
		staleAt:     math.MinInt64,
		invalidAt:   math.MinInt64,
	}
}

// token is p's exported snapshot; the zero Token for nil or a pair
// without an access token.
func (p *tokenPair) token() Token {
	if p == nil || p.access == "" {
		return Token{}
	}
	return Token{
		AccessToken: p.access,
		TokenType:   p.tokenType,
		ExpiresAt:   p.expiresAt,
		CompanyID:   p.companyID,
		CompanyName: p.companyName,
	}
}

// dropRefresh removes the refresh token refresh, which the server refused,
// from the pair held, whichever generation of it holds it now (a 401 may
// have replaced the pair by its rejected copy meanwhile).
func (c *Client) dropRefresh(refresh string) {
	for {
		p := c.pair.Load()
		if p == nil || p.refresh != refresh || c.pair.CompareAndSwap(p, p.withoutRefresh()) {
			return
		}
	}
}

// withoutRefresh returns a copy of p without its refresh token, after the
// server refused it.
func (p *tokenPair) withoutRefresh() *tokenPair {
	np := *p
	np.refresh = ""
	return &np
}

// newPair builds a token pair from a server answer. sentMono and sentWall are
// the client's clocks when the request that produced it was sent: the lifetime
// is counted from then, not from when the answer arrived.
func (c *Client) newPair(access, refresh, tokenType string, expiresIn int, sentMono time.Duration, sentWall time.Time) *tokenPair {
	p := &tokenPair{
		access:    access,
		refresh:   refresh,
		tokenType: tokenType,
		bearer:    []string{"Bearer " + access},
		staleAt:   math.MaxInt64,
		invalidAt: math.MaxInt64,
	}
	if p.tokenType == "" {
		p.tokenType = "Bearer"
	}
	var life time.Duration
	switch {
	case expiresIn > 0:
		if int64(expiresIn) > int64(maxLifetime/time.Second) {
			life = maxLifetime
		} else {
			life = time.Duration(expiresIn) * time.Second
		}
	default:
		if exp, ok := jwtExpiry(access); ok {
			life = exp.Sub(sentWall)
			if life > maxLifetime {
				life = maxLifetime
			}
		}
	}
	c.setDeadlines(p, life, sentMono, sentWall)
	return p
}

// setDeadlines sets p's deadlines for a token that lives life from sentMono
// (sentWall on the wall clock). A life of 0 or less means unknown: the
// token is used until the server rejects it.
func (c *Client) setDeadlines(p *tokenPair, life, sentMono time.Duration, sentWall time.Time) {
	if life <= 0 {
		return
	}
	margin := c.cfg.margin
	if margin > life/2 {
		margin = life / 2
	}
	leeway := margin / 4
	if leeway > 10*time.Second {
		leeway = 10 * time.Second
	}
	expires := sentMono + life
	p.staleAt = expires - margin
	p.invalidAt = expires - leeway
	p.expiresAt = sentWall.Add(life)
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
	switch {
	case f >= math.MaxInt32:
		return math.MaxInt32
	case f <= math.MinInt32:
		return math.MinInt32
	}
	return int(f)
}

// jwtExpiry reads the exp claim of a JWT without verifying it: the client only
// needs to know when to refresh, and the server remains the judge.
func jwtExpiry(tok string) (time.Time, bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *float64 `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == nil {
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
	if s == "" || len(s) > 16<<10 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// tokenState is the token lifecycle's state: the pair in use, the flight
// in progress and the failure cooldown. Client embeds it; the methods in this
// file are the only ones that touch it.
type tokenState struct {
	// pair is the current token pair; read without a lock, replaced whole.
	pair atomic.Pointer[tokenPair]
	// flight is the token request in progress, nil when none; written
	// under mu, read without it.
	flight atomic.Pointer[flight]
	// cooldownUntil is the monotonic time before which no automatic flight
	// starts after a failure; written under mu, read without it.
	cooldownUntil atomic.Int64
	// closed is set by Close; written under mu, read without it.
	closed atomic.Bool
	// keys are the keys WithAPIKeyFunc's function returned, scrubbed from
	// server text; replaced whole under mu, read without it. lastKey is the
	// latest of them.
	keys    atomic.Pointer[[]string]
	lastKey atomic.Pointer[string]

	// mu guards cooldown and lastErr, and serialises the start and the end
	// of flights with Close.
	mu       sync.Mutex
	cooldown time.Duration // the current failure cooldown; 0 after a success
	lastErr  error         // the error of the last failed flight

	wg sync.WaitGroup // the flights' goroutines
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
	kind   flightKind
	done   chan struct{}
	cancel context.CancelFunc // ends the flight's requests; called by Close

	pair    *tokenPair
	auth    *AuthResponse
	refresh *RefreshResponse
	err     error
}

// mono is the client's monotonic clock: time since construction.
func (c *Client) mono() time.Duration { return c.since(c.baseTime) }

// elapsed is time since construction on the real clock, for the cooldown.
func (c *Client) elapsed() time.Duration { return c.waited(c.baseTime) }

// useClock makes c judge token lifetimes by now instead of the real clock:
// a FakeServer gives its clients its own clock. Call it before c is shared.
func (c *Client) useClock(now func() time.Time) {
	base := now()
	real := c.baseTime
	c.now = now
	c.since = func(t time.Time) time.Duration { return now().Sub(t) }
	c.waited = func(time.Time) time.Duration { return timeSince(real) }
	c.baseTime = base
}

// usablePair returns a usable token pair. The fast path is lock-free and does not
// allocate: one atomic load, one clock read.
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
	return c.waitToken(ctx)
}

// refreshSoon starts a background refresh unless one is running or a failure
// cooldown is in force. Checked without a lock, so that callers inside the
// stale window never contend: at most one of them takes the lock to start it.
func (c *Client) refreshSoon(ctx context.Context) {
	if c.flight.Load() != nil || c.elapsed() < time.Duration(c.cooldownUntil.Load()) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() || c.flight.Load() != nil || c.elapsed() < time.Duration(c.cooldownUntil.Load()) {
		return
	}
	c.launch(ctx, flightAuto)
}

// usable reports whether p can be sent now (fresh or stale).
func (c *Client) usable(p *tokenPair) bool {
	return p != nil && c.mono() < p.invalidAt
}

// waitToken is the slow path: no usable token is held. It joins the flight in
// progress or starts one, and waits for it or for ctx.
func (c *Client) waitToken(ctx context.Context) (*tokenPair, error) {
	for {
		c.mu.Lock()
		if c.closed.Load() {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if p := c.pair.Load(); c.usable(p) {
			c.mu.Unlock()
			return p, nil
		}
		f := c.flight.Load()
		if f == nil {
			if now, until := c.elapsed(), time.Duration(c.cooldownUntil.Load()); now < until {
				err := &cachedError{err: c.lastErr, until: c.now().Add(until - now)}
				c.mu.Unlock()
				return nil, err
			}
			f = c.launch(ctx, flightAuto)
		}
		c.mu.Unlock()

		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("apala: waiting for an access token: %w", ctx.Err())
		}
		if f.err == nil {
			return f.pair, nil
		}
		// Every waiter shares the flight's error, with one exception: an
		// explicit refresh the server refused says nothing about the
		// automatic path, which may still fall back to the API key (fly
		// dropped the refused refresh token, so it goes straight there).
		if f.kind != flightRefresh || !refused(f.err) {
			return nil, f.err
		}
	}
}

// refused reports whether err is the server refusing a token request's
// credentials (400, 401, 403), as opposed to a transient failure.
func refused(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && (ae.StatusCode == 400 || ae.StatusCode == 401 || ae.StatusCode == 403)
}

// cachedError is the error of the last failed flight, served again during
// the failure cooldown without a request. It matches what the original
// matched (errors.Is, errors.As) and says that nothing was sent.
type cachedError struct {
	err   error
	until time.Time // when the cooldown ends
}

func (e *cachedError) Error() string {
	return e.err.Error() + " (cached: no new token request until " + e.until.UTC().Format(time.RFC3339) + ")"
}

func (e *cachedError) Unwrap() error { return e.err }

// requestToken runs a flight of the given kind for Authenticate or
// RefreshAccessToken: it joins one of the same kind already in progress,
// waits out one of another kind, and ignores the failure cooldown.
func (c *Client) requestToken(ctx context.Context, kind flightKind) (*flight, error) {
	if ctx == nil {
		return nil, errNilContext
	}
	for {
		c.mu.Lock()
		if c.closed.Load() {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		f := c.flight.Load()
		if f == nil {
			if kind == flightRefresh {
				if p := c.pair.Load(); p == nil || p.refresh == "" {
					c.mu.Unlock()
					return nil, ErrNotAuthenticated
				}
			}
			f = c.launch(ctx, kind)
		}
		c.mu.Unlock()

		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("apala: waiting for an access token: %w", ctx.Err())
		}
		if f.kind == kind {
			return f, nil
		}
	}
}

// launch starts a flight for the caller whose context is ctx. c.mu must be
// held, and no flight be in progress. The flight's context keeps ctx's
// values (a trace, a logger) for the hooks and the log, but not its
// cancellation or deadline, so that no caller can end the flight for the
// others; Close cancels it through f.cancel.
func (c *Client) launch(ctx context.Context, kind flightKind) *flight {
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &flight{kind: kind, done: make(chan struct{}), cancel: cancel}
	c.flight.Store(f)
	c.wg.Add(1)
	go c.fly(fctx, f)
	return f
}

// fly runs flight f, then publishes its result. Every failed flight starts
// the failure cooldown, explicit ones included, except an explicit refresh
// the server refused: that only drops the refused refresh token, so that the
// automatic path may still fall back to the API key.
func (c *Client) fly(ctx context.Context, f *flight) {
	defer c.wg.Done()
	defer f.cancel()

	old := c.pair.Load()
	if f.kind == flightAuto {
		// A fresh token in the store needs no lock: only a token request
		// does.
		f.pair = c.adopt(ctx, old)
	}
	if f.pair == nil {
		unlock, locked := c.lockStore(ctx)
		if f.kind == flightAuto && locked {
			// Again under the lock: the process that held it may have
			// just saved a token.
			f.pair = c.adopt(ctx, old)
		}
		if f.pair == nil {
			switch f.kind {
			case flightAuth:
				f.auth, f.pair, f.err = c.exchange(ctx)
			case flightRefresh:
				f.refresh, f.pair, f.err = c.refresh(ctx, old)
			default:
				f.pair, f.err = c.obtain(ctx)
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
		f.pair, f.auth, f.refresh, f.err = nil, nil, nil, ErrClosed
	case f.err == nil:
		c.pair.Store(f.pair)
		c.cooldown = 0
		c.cooldownUntil.Store(0)
		c.lastErr = nil
	case f.kind == flightRefresh && refused(f.err):
		c.dropRefresh(old.refresh)
	default:
		if c.cooldown == 0 {
			c.cooldown = minCooldown
		} else if c.cooldown *= 2; c.cooldown > maxCooldown {
			c.cooldown = maxCooldown
		}
		cooldown = c.cooldown
		c.cooldownUntil.Store(int64(c.elapsed() + c.cooldown))
		c.lastErr = f.err
	}
	c.flight.Store(nil)
	c.mu.Unlock()
	if f.err != nil && f.kind == flightAuto && !errors.Is(f.err, ErrClosed) {
		c.logAttrs(ctx, slog.LevelWarn, "apala: token request failed",
			slog.String("error", f.err.Error()), slog.Duration("cooldown", cooldown))
	}
	close(f.done)
}

// obtain is the automatic path: refresh when a refresh token is held, and
// exchange the API key when there is none or the server refuses it.
func (c *Client) obtain(ctx context.Context) (*tokenPair, error) {
	if p := c.pair.Load(); p != nil && p.refresh != "" {
		_, np, err := c.refresh(ctx, p)
		if err == nil {
			return np, nil
		}
		if !refused(err) {
			return nil, err
		}
		var ae *APIError
		errors.As(err, &ae)
		c.logAttrs(ctx, slog.LevelWarn, "apala: refresh refused; exchanging the API key",
			slog.Int("status", ae.StatusCode))
	}
	_, np, err := c.exchange(ctx)
	return np, err
}

// exchange trades the API key for a token pair (POST /api/auth/token). With
// WithAPIKeyFunc the key is asked for now, and once more after a 401: a key
// rotated meanwhile gets one more try.
func (c *Client) exchange(ctx context.Context) (ar *AuthResponse, p *tokenPair, err error) {
	defer c.reportToken(ctx, false, time.Now(), &p, &err)
	key, err := c.key(ctx)
	if err != nil {
		return nil, nil, err
	}
	ar, p, err = c.exchangeKey(ctx, key)
	if c.cfg.keyFunc != nil && errors.Is(err, ErrUnauthorized) {
		if next, kerr := c.key(ctx); kerr == nil && next != key {
			ar, p, err = c.exchangeKey(ctx, next)
		}
	}
	return ar, p, err
}

// key returns the API key for an exchange: the one NewClient was given, or
// what WithAPIKeyFunc's function returns now, remembered for scrubbing.
func (c *Client) key(ctx context.Context) (string, error) {
	fn := c.cfg.keyFunc
	if fn == nil {
		return c.apiKey, nil
	}
	k, err := fn(ctx)
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
	if ks := c.keys.Load(); ks != nil {
		for _, old := range *ks {
			if old == k {
				return
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var ks []string
	if old := c.keys.Load(); old != nil {
		ks = append(ks, *old...)
	}
	ks = append(ks, k)
	c.keys.Store(&ks)
}

// exchangeKey trades key for a token pair.
func (c *Client) exchangeKey(ctx context.Context, key string) (*AuthResponse, *tokenPair, error) {
	body := c.authBody
	if key != c.apiKey || body == nil {
		var err error
		if body, err = json.Marshal(struct {
			APIKey string `json:"api_key"`
		}{key}); err != nil {
			return nil, nil, fmt.Errorf("apala: encoding the API key: %w", err)
		}
	}
	var w struct {
		AuthResponse
		ExpiresIn json.RawMessage `json:"expires_in"` // read leniently by seconds
	}
	rq := &request{method: http.MethodPost, path: pathToken, body: body}
	sent, err := c.send(ctx, rq, &w)
	if err != nil {
		return nil, nil, err
	}
	ar := w.AuthResponse
	ar.ExpiresIn = seconds(w.ExpiresIn)
	if !validToken(ar.AccessToken) {
		return nil, nil, rq.errorf(nil, "response has no valid access_token")
	}
	if ar.RefreshToken != "" && !validToken(ar.RefreshToken) {
		return nil, nil, rq.errorf(nil, "response has a malformed refresh_token")
	}
	p := c.newPair(ar.AccessToken, ar.RefreshToken, ar.TokenType, ar.ExpiresIn, sent.mono, sent.wall)
	p.keyID = c.keyID(key)
	// The token type and the company are the server's text, printed with
	// the Token and the answer, and logged: scrubbed like any, of the new
	// tokens too.
	fresh := []*tokenPair{p}
	ar.TokenType, ar.CompanyID, ar.CompanyName = c.scrub(ar.TokenType, fresh), c.scrub(ar.CompanyID, fresh), c.scrub(ar.CompanyName, fresh)
	p.tokenType, p.companyID, p.companyName = c.scrub(p.tokenType, fresh), ar.CompanyID, ar.CompanyName
	c.logAttrs(ctx, slog.LevelInfo, "apala: authenticated",
		slog.String("company_id", p.companyID),
		slog.String("company_name", p.companyName),
		slog.Duration("expires_in", time.Duration(ar.ExpiresIn)*time.Second))
	return &ar, p, nil
}

// refresh trades the refresh token of old for a new access token
// (POST /api/auth/refresh). The refresh token is kept unless the server
// rotates it.
func (c *Client) refresh(ctx context.Context, old *tokenPair) (_ *RefreshResponse, p *tokenPair, err error) {
	if old == nil || old.refresh == "" {
		return nil, nil, ErrNotAuthenticated
	}
	defer c.reportToken(ctx, true, time.Now(), &p, &err)
	body, err := json.Marshal(struct {
		RefreshToken string `json:"refresh_token"`
	}{old.refresh})
	if err != nil {
		return nil, nil, fmt.Errorf("apala: encoding refresh request: %w", err)
	}
	var rr struct {
		RefreshResponse
		ExpiresIn    json.RawMessage `json:"expires_in"` // read leniently by seconds
		RefreshToken string          `json:"refresh_token"`
	}
	rq := &request{method: http.MethodPost, path: pathRefresh, body: body, carries: old}
	sent, err := c.send(ctx, rq, &rr)
	if err != nil {
		return nil, nil, err
	}
	rr.RefreshResponse.ExpiresIn = seconds(rr.ExpiresIn)
	if !validToken(rr.AccessToken) {
		return nil, nil, rq.errorf(nil, "response has no valid access_token")
	}
	refresh := old.refresh
	if rr.RefreshToken != "" {
		if !validToken(rr.RefreshToken) {
			return nil, nil, rq.errorf(nil, "response has a malformed refresh_token")
		}
		refresh = rr.RefreshToken
	}
	p = c.newPair(rr.AccessToken, refresh, rr.TokenType, rr.RefreshResponse.ExpiresIn, sent.mono, sent.wall)
	p.companyID, p.companyName, p.keyID = old.companyID, old.companyName, old.keyID
	fresh := []*tokenPair{old, p} // the token type is the server's text: scrubbed
	p.tokenType = c.scrub(p.tokenType, fresh)
	rr.RefreshResponse.TokenType = c.scrub(rr.RefreshResponse.TokenType, fresh)
	c.logAttrs(ctx, slog.LevelInfo, "apala: token refreshed",
		slog.Duration("expires_in", time.Duration(rr.RefreshResponse.ExpiresIn)*time.Second))
	resp := rr.RefreshResponse
	return &resp, p, nil
}

// reportToken calls the Token hook, if any, about the token request that
// started at start and ended with *p and *err.
func (c *Client) reportToken(ctx context.Context, refresh bool, start time.Time, p **tokenPair, err *error) {
	hook := c.cfg.hooks.Token
	if hook == nil {
		return
	}
	t := TokenInfo{Refresh: refresh, Duration: time.Since(start), Err: *err}
	if *err == nil {
		t.Token = (*p).token()
	}
	hook(ctx, t)
}

// reject invalidates p after the server refused it, unless a newer pair has
// replaced it meanwhile (compare-and-swap: a token refreshed by another
// caller is kept).
func (c *Client) reject(p *tokenPair) {
	c.pair.CompareAndSwap(p, p.rejected())
}

// closeFlights is Close's half in the token lifecycle: no flight starts
// after it, the one in progress is cancelled and waited for, and the pair is
// replaced by one that is never usable.
func (c *Client) closeFlights() {
	c.mu.Lock()
	c.closed.Store(true)
	c.pair.Store(closedPair)
	if f := c.flight.Load(); f != nil {
		f.cancel()
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// isClosed reports whether Close was called.
func (c *Client) isClosed() bool { return c.closed.Load() }

// Sharing tokens through a TokenStore. The client loads the store before
// every token request, holding the store's lock when it has one, adopts a
// stored token that another client got, and saves every token it gets. The
// store is a cache: its failures are logged at Warn and cost at most a token
// request, never a call.

// TokenStore keeps a token where other clients, in this process or in
// others, find it, so that short-lived processes and many processes on one
// host make one token request per token lifetime between them. Give one to
// a client with WithTokenStore; NewFileTokenStore makes one backed by a
// file. A store shared by processes on several machines (Redis, a database)
// is a few lines of the user's code.
//
// A store may also implement TokenLocker, to serialise token requests
// across processes.
type TokenStore interface {
	// Load returns the stored token, or nil, nil when none is stored.
	Load(ctx context.Context) (*StoredToken, error)
	// Save stores t, replacing what was stored.
	Save(ctx context.Context, t *StoredToken) error
}

// TokenLocker is implemented by a TokenStore that serialises token requests
// across processes: the client takes the lock before it loads the store and
// releases it once the result of its token request is saved, so that N
// processes racing for a token make one request and the others adopt it.
// Lock waits until the lock is held or ctx ends; unlock releases it.
type TokenLocker interface {
	Lock(ctx context.Context) (unlock func(), err error)
}

// StoredToken is a token pair as a TokenStore keeps it. It is the one type
// of the package meant to be persisted: fmt and log/slog print it redacted,
// but encoding/json gives its real fields, so that a store can encode it.
// The API key is never part of it.
type StoredToken struct {
	AccessToken  string    `json:"access_token"`
	RefreshToken string    `json:"refresh_token"`
	TokenType    string    `json:"token_type"`
	ExpiresAt    time.Time `json:"expires_at"` // zero: unknown, and never adopted
	CompanyID    string    `json:"company_id"`
	CompanyName  string    `json:"company_name"`
	// KeyID is the fingerprint of the base URL and the API key the token
	// came from, set by the client: the first 16 bytes of a SHA-256 of
	// both, in hex, which cannot be turned back into the key. A client
	// adopts only a token of its own base URL and key.
	KeyID string `json:"key_id"`
}

// printable lists t's fields for printing, the tokens redacted.
func (t StoredToken) printable() []slog.Attr {
	return []slog.Attr{
		slog.String("access_token", redact(t.AccessToken)),
		slog.String("refresh_token", redact(t.RefreshToken)),
		slog.String("token_type", t.TokenType),
		slog.Time("expires_at", t.ExpiresAt),
		slog.String("company_id", t.CompanyID),
		slog.String("company_name", t.CompanyName),
		slog.String("key_id", t.KeyID),
	}
}

// String describes the stored token without its tokens.
func (t StoredToken) String() string { return describe("apala.StoredToken", t.printable()) }

// GoString is String, for code that asks for it by name; fmt's %#v goes
// through Format.
func (t StoredToken) GoString() string { return t.String() }

// Format implements fmt.Formatter: every verb prints String.
func (t StoredToken) Format(f fmt.State, verb rune) { formatRedacted(f, verb, t.String()) }

// LogValue implements slog.LogValuer, leaving the tokens out.
func (t StoredToken) LogValue() slog.Value { return slog.GroupValue(t.printable()...) }

// keyID is the fingerprint of the client's base URL and key.
func (c *Client) keyID(key string) string {
	h := sha256.Sum256([]byte("apala-go token store\x00" + c.baseStr + "\x00" + key))
	return hex.EncodeToString(h[:16])
}

// currentKeyID is the fingerprint of the key the client uses now: the one
// NewClient was given, or the latest WithAPIKeyFunc's function returned,
// which is asked for once if it never was.
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

// storeTimeout bounds each use of a TokenStore (a lock waited for, a load,
// a save): a store that hangs costs a token request, never a call. It is
// longer than the file store's takeover bound, so that a crashed holder's
// lock is taken over rather than given up on. Tests shorten it.
var storeTimeout = 15 * time.Second

// lockStore takes the store's lock when it is a TokenLocker, and returns
// what releases it and whether the lock is held. A lock that cannot be
// taken is logged, and the token request goes on without it.
func (c *Client) lockStore(ctx context.Context) (unlock func(), locked bool) {
	l, ok := c.cfg.store.(TokenLocker)
	if !ok {
		return func() {}, false
	}
	lctx, cancel := context.WithTimeout(ctx, storeTimeout)
	release, err := l.Lock(lctx)
	if err != nil || release == nil {
		cancel()
		c.storeFailed(ctx, "lock", err, nil)
		return func() {}, false
	}
	return func() { release(); cancel() }, true
}

// adopt loads the store and returns a pair made of the token stored there
// when it came from this client's base URL and key, is newer than old (or,
// when the server refused old's token, is another one), and would be fresh (more than the refresh margin,
// capped at half the time left, before it expires); nil otherwise.
func (c *Client) adopt(ctx context.Context, old *tokenPair) *tokenPair {
	if c.cfg.store == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	st, err := c.cfg.store.Load(ctx)
	if err != nil {
		c.storeFailed(ctx, "load", err, nil)
		return nil
	}
	if st == nil || st.ExpiresAt.IsZero() || !validToken(st.AccessToken) || (st.RefreshToken != "" && !validToken(st.RefreshToken)) {
		return nil
	}
	if id, err := c.currentKeyID(ctx); err != nil || st.KeyID != id {
		return nil
	}
	switch {
	case old == nil:
	case old.refused != "":
		// The server refused old's token: any other one is worth a try.
		if st.AccessToken == old.refused {
			return nil
		}
	case st.AccessToken == old.access || !st.ExpiresAt.After(old.expiresAt):
		return nil
	}
	p := &tokenPair{
		access: st.AccessToken, refresh: st.RefreshToken, tokenType: st.TokenType,
		bearer:    []string{"Bearer " + st.AccessToken},
		companyID: st.CompanyID, companyName: st.CompanyName, keyID: st.KeyID,
		staleAt: math.MaxInt64, invalidAt: math.MaxInt64,
	}
	if p.tokenType == "" {
		p.tokenType = "Bearer"
	}
	p.tokenType = c.scrub(p.tokenType, []*tokenPair{p})
	now, mono := c.now(), c.mono()
	c.setDeadlines(p, st.ExpiresAt.Sub(now), mono, now)
	if mono >= p.staleAt {
		return nil
	}
	c.logAttrs(ctx, slog.LevelInfo, "apala: token taken from the store",
		slog.String("company_id", p.companyID), slog.Duration("expires_in", st.ExpiresAt.Sub(now)))
	return p
}

// save stores p, when the client has a store.
func (c *Client) save(ctx context.Context, p *tokenPair) {
	if c.cfg.store == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	err := c.cfg.store.Save(ctx, &StoredToken{
		AccessToken: p.access, RefreshToken: p.refresh, TokenType: p.tokenType, ExpiresAt: p.expiresAt,
		CompanyID: p.companyID, CompanyName: p.companyName, KeyID: p.keyID,
	})
	if err != nil {
		c.storeFailed(ctx, "save", err, p)
	}
}

// storeFailed logs a failure of the store at Warn: a cache that failed. Its
// error is scrubbed of the client's secrets and of p's, the pair it was
// given, which the client may not hold yet.
func (c *Client) storeFailed(ctx context.Context, op string, err error, p *tokenPair) {
	msg := "<nil>"
	if err != nil {
		msg = c.scrub(err.Error(), []*tokenPair{p})
	}
	c.logAttrs(ctx, slog.LevelWarn, "apala: token store failed; going on without it",
		slog.String("op", op), slog.String("error", msg))
}

// NewFileTokenStore returns a TokenStore keeping the token in one JSON file
// at path, written with mode 0600 by an atomic rename in its directory, so
// that a reader never sees half a file. It is also a TokenLocker: token
// requests are serialised across processes by a lock file beside it (path
// + ".lock", created with O_EXCL), taken over when older than 10 seconds, so
// that a crashed holder blocks nobody for long. A file that holds no token
// of this package is ignored and overwritten. The API key is never stored;
// the tokens are, so keep the file where only the service's user reads it.
// On platforms without a file system (js/wasm) its methods return errors.
func NewFileTokenStore(path string) TokenStore { return &fileStore{path: path} }

// fileLockStale is how old a lock file is before another process takes it
// over; tests shorten it.
var fileLockStale = 10 * time.Second

// fileStore is the TokenStore of NewFileTokenStore.
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
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err == nil && !fi.Mode().IsRegular() {
		err = errors.New("not a regular file")
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
		err = os.Rename(tmp.Name(), s.path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("apala: token store: %w", err)
	}
	return nil
}

// Lock implements TokenLocker with a lock file. A lock file older than
// fileLockStale (or dated further than that in the future) is taken over:
// its holder crashed or hangs; one that cannot be removed is an error, and
// the client goes on without the lock. Two processes
// taking one over at once may both hold the lock; the cost is one more
// token request, never a failed call.
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
		// Stale: older than the bound, or dated in the future by more
		// than it (a clock set back).
		if fi, err := os.Stat(name); err == nil {
			if age := time.Since(fi.ModTime()); age > fileLockStale || age < -fileLockStale {
				if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return nil, fmt.Errorf("apala: token store lock: taking over a stale lock: %w", err)
				}
				continue
			}
		}
		if err := sleep(ctx, wait); err != nil {
			return nil, fmt.Errorf("apala: token store lock: %w", err)
		}
		if wait < 50*time.Millisecond {
			wait *= 2
		}
	}
}
