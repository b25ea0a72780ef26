package apala

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Defaults and the environment variables read by NewClientFromEnv.
const (
	DefaultBaseURL       = "http://localhost:4000" // the Apala server's address when none is given
	DefaultRefreshMargin = 60 * time.Second        // how long before expiry a token is refreshed

	EnvAPIKey      = "APALA_API_KEY"      // the API key (required by NewClientFromEnv)
	EnvBaseURL     = "APALA_BASE_URL"     // the base URL (optional)
	EnvCompanyGUID = "APALA_COMPANY_GUID" // the company GUID sent as "company" (optional)
)

const (
	defaultMaxRetries = 2
	defaultMinBackoff = 500 * time.Millisecond
	defaultMaxBackoff = 8 * time.Second
	defaultTimeout    = 60 * time.Second

	maxRetryAfter = 60 * time.Second
	maxBody       = 10 << 20 // bytes of a success body decoded at most
	maxErrorBody  = 64 << 10 // bytes of an error body read for its message
	maxDrain      = 1 << 20  // bytes drained past that so the connection is reused

	userAgent = "apala-go/1"
)

// Clocks, replaced by tests so that expiry tests never sleep. A client reads
// them once, in NewClient.
var (
	timeNow   = time.Now
	timeSince = time.Since
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrUnauthorized matches an *APIError with status 401.
	ErrUnauthorized = errors.New("apala: unauthorized")
	// ErrForbidden matches an *APIError with status 403.
	ErrForbidden = errors.New("apala: forbidden")
	// ErrRateLimited matches an *APIError with status 429.
	ErrRateLimited = errors.New("apala: rate limited")
	// ErrServer matches an *APIError with any 5xx status.
	ErrServer = errors.New("apala: server error")
	// ErrConnection matches a failure to reach the server or a broken
	// connection; such errors also unwrap to the *url.Error underneath.
	ErrConnection = errors.New("apala: connection failed")
	// ErrNotAuthenticated is returned by RefreshAccessToken when no refresh
	// token is held.
	ErrNotAuthenticated = errors.New("apala: not authenticated: no refresh token held")
	// ErrMissingAPIKey is returned by NewClient for an empty API key.
	ErrMissingAPIKey = errors.New("apala: missing API key")
	// ErrClosed is returned by every call made after Close.
	ErrClosed = errors.New("apala: client closed")
	// ErrPartial matches the error of SubmitFeedbackBulk when the server
	// reported a failure or stored fewer entries than were sent; the
	// server's full answer is returned with it.
	ErrPartial = errors.New("apala: partial success")
)

// errNilContext is returned, instead of a panic, for a nil context.
var errNilContext = errors.New("apala: nil context")

// APIError is the error for every answer of the server outside 2xx. Match
// its kind with errors.Is and ErrUnauthorized, ErrForbidden, ErrRateLimited
// or ErrServer, or read it with errors.As.
type APIError struct {
	StatusCode int
	Method     string
	Path       string
	Message    string        // the server's error text, when it sent one
	RetryAfter time.Duration // from Retry-After, when present

	contentType string // named in Error when the body was not JSON
}

// Error describes the failure: method, path, status and the server's message,
// or the content type of a body that was not JSON (never the body itself).
func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "apala: %s %s: %d %s", e.Method, e.Path, e.StatusCode, http.StatusText(e.StatusCode))
	switch {
	case e.Message != "":
		b.WriteString(": ")
		b.WriteString(e.Message)
	case e.StatusCode >= 300 && e.StatusCode < 400:
		b.WriteString(" (redirect not followed)")
	case e.contentType != "":
		fmt.Fprintf(&b, " (%s response)", e.contentType)
	}
	return b.String()
}

// Is reports whether target is the sentinel for e's status.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrUnauthorized:
		return e.StatusCode == http.StatusUnauthorized
	case ErrForbidden:
		return e.StatusCode == http.StatusForbidden
	case ErrRateLimited:
		return e.StatusCode == http.StatusTooManyRequests
	case ErrServer:
		return e.StatusCode >= 500 && e.StatusCode <= 599
	}
	return false
}

// ValidationError reports input the client refused before sending anything.
// Field names the field as the Go type spells it; inside a list it carries
// the item's index, as in "Messages[2].Channel".
type ValidationError struct{ Field, Reason string }

// Error names the field and the reason.
func (e *ValidationError) Error() string {
	return "apala: invalid " + e.Field + ": " + e.Reason
}

// Option configures a Client. Options are made only by the With* functions
// and checked by NewClient.
type Option struct{ apply func(*config) }

type config struct {
	baseURL    string
	hc         *http.Client
	logger     *slog.Logger
	margin     time.Duration
	maxRetries int
	minBackoff time.Duration
	maxBackoff time.Duration
	timeout    time.Duration
	company    string
	insecure   bool
}

// WithBaseURL sets the server's address, an absolute http or https URL; a
// path prefix is kept (https://gw.example/apala + /api/...). Default
// DefaultBaseURL.
func WithBaseURL(url string) Option {
	return Option{func(c *config) { c.baseURL = url }}
}

// WithHTTPClient sets the *http.Client that carries requests. The client
// works on a copy, which never follows redirects. Nil means a client of its
// own, with a transport cloned from http.DefaultTransport.
func WithHTTPClient(hc *http.Client) Option {
	return Option{func(c *config) { c.hc = hc }}
}

// WithLogger sets the logger for debugging: each HTTP attempt at Debug,
// authentication and refresh at Info, retries and refused refreshes at Warn.
// Nil, the default, logs nothing. No secret is ever logged.
func WithLogger(l *slog.Logger) Option {
	return Option{func(c *config) { c.logger = l }}
}

// WithRefreshMargin sets how long before expiry the token is refreshed in the
// background. It is capped at half the token's lifetime. Default
// DefaultRefreshMargin; negative is an error.
func WithRefreshMargin(d time.Duration) Option {
	return Option{func(c *config) { c.margin = d }}
}

// WithMaxRetries sets how many more attempts follow a failed first one on a
// connection error or a 408, 429, 500, 502, 503 or 504 answer. Default 2;
// 0 disables retries; negative is an error.
func WithMaxRetries(n int) Option {
	return Option{func(c *config) { c.maxRetries = n }}
}

// WithRetryBackoff sets the bounds of the jittered exponential backoff
// between retries. Default 500ms and 8s; min must be positive and max at
// least min.
func WithRetryBackoff(min, max time.Duration) Option {
	return Option{func(c *config) { c.minBackoff, c.maxBackoff = min, max }}
}

// WithTimeout sets the time limit of each HTTP attempt, the reading of its
// answer included. Default 60s; 0 means no limit but the caller's context;
// negative is an error.
func WithTimeout(d time.Duration) Option {
	return Option{func(c *config) { c.timeout = d }}
}

// WithCompanyGUID sets the company GUID sent as "company" in message calls
// that do not name one. It must be a UUID; empty means none.
func WithCompanyGUID(guid string) Option {
	return Option{func(c *config) { c.company = guid }}
}

// WithInsecureHTTP allows an http:// base URL to a host that is not
// loopback. Without it such a URL is refused, so that an API key never
// crosses a network in clear text by accident.
func WithInsecureHTTP() Option {
	return Option{func(c *config) { c.insecure = true }}
}

// Client talks to the Apala API. It exchanges the API key for a token pair on
// first use, keeps the access token fresh by itself, and attaches it to every
// call; its users never handle tokens.
//
// A Client is safe for concurrent use by any number of goroutines: create one
// and share it. Close it when done to stop its background work and release
// its idle connections.
type Client struct {
	apiKey   string
	authBody []byte // {"api_key": ...}, marshalled once
	base     *url.URL
	baseStr  string // base URL without a trailing slash
	origin   string // scheme://host:port of the base URL
	company  string
	hc       *http.Client
	ownRT    *http.Transport // the transport the client made, closed by Close; nil with WithHTTPClient
	log      *slog.Logger
	margin   time.Duration
	retries  int
	minBack  time.Duration
	maxBack  time.Duration
	timeout  time.Duration
	since    func(time.Time) time.Duration
	now      func() time.Time
	baseTime time.Time // the zero of the monotonic clock

	// pair is the current token pair; read without a lock.
	pair atomic.Pointer[tokenPair]
	// flight is the token request in progress, nil when none; written
	// under mu, read without it.
	flight atomic.Pointer[flight]
	// cooldownUntil is the monotonic time before which no automatic flight
	// starts after a failure; written under mu, read without it.
	cooldownUntil atomic.Int64

	// mu guards closed, cooldown and lastErr, and serialises the start
	// and the end of flights.
	mu       sync.Mutex
	closed   bool
	cooldown time.Duration // the current failure cooldown; 0 after a success
	lastErr  error         // the error of the last failed automatic flight

	wg sync.WaitGroup // the flights' goroutines
}

// NewClient returns a client that authenticates with apiKey. It sends
// nothing: the first call that needs a token authenticates. It fails with
// ErrMissingAPIKey on an empty key, and with an error naming the option on
// an invalid one.
func NewClient(apiKey string, opts ...Option) (*Client, error) {
	if apiKey == "" {
		return nil, ErrMissingAPIKey
	}
	cfg := config{
		baseURL:    DefaultBaseURL,
		margin:     DefaultRefreshMargin,
		maxRetries: defaultMaxRetries,
		minBackoff: defaultMinBackoff,
		maxBackoff: defaultMaxBackoff,
		timeout:    defaultTimeout,
	}
	for _, o := range opts {
		if o.apply != nil {
			o.apply(&cfg)
		}
	}
	switch {
	case cfg.margin < 0:
		return nil, errors.New("apala: WithRefreshMargin: negative margin")
	case cfg.maxRetries < 0:
		return nil, errors.New("apala: WithMaxRetries: negative count")
	case cfg.minBackoff <= 0 || cfg.maxBackoff < cfg.minBackoff:
		return nil, errors.New("apala: WithRetryBackoff: want 0 < min <= max")
	case cfg.timeout < 0:
		return nil, errors.New("apala: WithTimeout: negative timeout")
	}
	if cfg.company != "" && !isUUID(cfg.company) {
		return nil, &ValidationError{Field: "CompanyGUID", Reason: "not a UUID"}
	}
	base, err := parseBaseURL(cfg.baseURL, cfg.insecure)
	if err != nil {
		return nil, err
	}
	authBody, err := json.Marshal(struct {
		APIKey string `json:"api_key"`
	}{apiKey})
	if err != nil {
		return nil, fmt.Errorf("apala: encoding the API key: %w", err)
	}

	c := &Client{
		apiKey:   apiKey,
		authBody: authBody,
		base:     base,
		baseStr:  strings.TrimSuffix(base.String(), "/"),
		origin:   origin(base),
		company:  cfg.company,
		log:      cfg.logger,
		margin:   cfg.margin,
		retries:  cfg.maxRetries,
		minBack:  cfg.minBackoff,
		maxBack:  cfg.maxBackoff,
		timeout:  cfg.timeout,
		since:    timeSince,
		now:      timeNow,
	}
	c.baseTime = c.now()
	if cfg.hc != nil {
		hc := *cfg.hc
		c.hc = &hc
	} else {
		if t, ok := http.DefaultTransport.(*http.Transport); ok {
			c.ownRT = t.Clone()
			c.ownRT.MaxIdleConnsPerHost = 64
			c.hc = &http.Client{Transport: c.ownRT}
		} else {
			c.hc = &http.Client{Transport: http.DefaultTransport}
		}
	}
	c.hc.CheckRedirect = noRedirects
	return c, nil
}

// NewClientFromEnv is NewClient with the API key from APALA_API_KEY, and the
// base URL and company GUID from APALA_BASE_URL and APALA_COMPANY_GUID when
// they are set. Options win over the environment.
func NewClientFromEnv(opts ...Option) (*Client, error) {
	key := os.Getenv(EnvAPIKey)
	if key == "" {
		return nil, fmt.Errorf("%w: %s is not set", ErrMissingAPIKey, EnvAPIKey)
	}
	var env []Option
	if u := os.Getenv(EnvBaseURL); u != "" {
		env = append(env, WithBaseURL(u))
	}
	if g := os.Getenv(EnvCompanyGUID); g != "" {
		env = append(env, WithCompanyGUID(g))
	}
	return NewClient(key, append(env, opts...)...)
}

func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// parseBaseURL accepts an absolute http(s) URL without user info, query or
// fragment; http only to a loopback host unless insecure.
func parseBaseURL(raw string, insecure bool) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// Not err itself: a *url.Error quotes the URL, which may hold a password.
		if ue, ok := err.(*url.Error); ok {
			err = ue.Err
		}
		return nil, fmt.Errorf("apala: invalid base URL: %w", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("apala: invalid base URL: want an absolute http or https URL")
	case u.Host == "" || u.Hostname() == "":
		return nil, errors.New("apala: invalid base URL: no host")
	case u.User != nil:
		return nil, errors.New("apala: invalid base URL: user info is not allowed")
	case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return nil, errors.New("apala: invalid base URL: query and fragment are not allowed")
	case u.Opaque != "":
		return nil, errors.New("apala: invalid base URL: want an absolute http or https URL")
	}
	if u.Scheme == "http" && !insecure && !isLoopback(u.Hostname()) {
		return nil, errors.New("apala: invalid base URL: http:// to a host that is not loopback; use https, or WithInsecureHTTP")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// origin is scheme://host:port with the default port made explicit, so that
// two spellings of one origin compare equal.
func origin(u *url.URL) string {
	scheme := strings.ToLower(u.Scheme)
	port := u.Port()
	if port == "" {
		port = "80"
		if scheme == "https" {
			port = "443"
		}
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// CompanyGUID returns the company GUID the client sends when a request names
// none: from WithCompanyGUID or APALA_COMPANY_GUID, or "" when unset.
func (c *Client) CompanyGUID() string { return c.company }

// printable lists what the client shows of itself: its base URL, never
// its secrets.
func (c *Client) printable() []slog.Attr {
	if c == nil {
		return nil
	}
	return []slog.Attr{slog.String("base_url", c.baseStr), slog.String("api_key", redact(c.apiKey))}
}

// String describes the client without its secrets.
func (c *Client) String() string { return describe("apala.Client", c.printable()) }

// GoString is String, for code that asks for it by name; fmt's %#v goes
// through Format.
func (c *Client) GoString() string { return c.String() }

// Format implements fmt.Formatter: every verb prints String.
func (c *Client) Format(f fmt.State, verb rune) { formatRedacted(f, verb, c.String()) }

// LogValue implements slog.LogValuer, leaving the secrets out.
func (c *Client) LogValue() slog.Value { return slog.GroupValue(c.printable()...) }

// MarshalJSON encodes the client's description, without its secrets.
func (c *Client) MarshalJSON() ([]byte, error) { return marshalAttrs(c.printable()) }

// Close ends the client: it cancels and waits for a token request in
// progress, closes the idle connections of the transport the client made,
// and makes later calls fail with ErrClosed. It is idempotent and always
// returns nil.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	c.pair.Store(closedPair)
	if f := c.flight.Load(); f != nil {
		f.cancel()
	}
	c.mu.Unlock()
	c.wg.Wait()
	if c.ownRT != nil {
		c.ownRT.CloseIdleConnections()
	}
	return nil
}

// request is one logical call: its attempts, retries and replay share it.
type request struct {
	method  string
	path    string
	body    []byte // marshalled once, replayed from bytes
	auth    bool   // attach the access token, replay once on 401
	idemKey string // Idempotency-Key, the same for every attempt

	// pairs are the token pairs whose secrets the request carried (the
	// access tokens its attempts were sent with, the refresh token of a
	// refresh), so that they are scrubbed from the server's answer even
	// after the client replaced them. pairBuf spares an allocation.
	pairs   []*tokenPair
	pairBuf [2]*tokenPair
}

// carried records that rq carries the secrets of p.
func (rq *request) carried(p *tokenPair) {
	if p == nil {
		return
	}
	for _, q := range rq.pairs {
		if q == p {
			return
		}
	}
	if rq.pairs == nil {
		rq.pairs = rq.pairBuf[:0]
	}
	rq.pairs = append(rq.pairs, p)
}

// sendTime is when the attempt that succeeded was sent, on both clocks.
type sendTime struct {
	mono time.Duration
	wall time.Time
}

var (
	hdrJSON      = []string{"application/json"}
	hdrUserAgent = []string{userAgent}
)

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// Do sends one call to the Apala API: method and path (absolute, under the
// base URL), in marshalled as the JSON body (nil: no body) and the JSON
// answer decoded into out (nil: discarded). It attaches the access token,
// retries transient failures, and replays the call once with a new token
// when the server answers 401. A POST carries an Idempotency-Key that stays
// the same across its retries and replay.
//
// path must stay under the base URL: a dot segment ("..", escaped or not) is
// a *ValidationError and nothing is sent. A 204 No Content answer leaves out
// untouched.
//
// Errors are *APIError for answers outside 2xx, and match ErrConnection for
// network failures; a decoding failure names the path.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	if method == "" {
		method = http.MethodGet
	}
	if !validPath(path) {
		return &ValidationError{Field: "path", Reason: "want an absolute path under the base URL, such as /api/feedback, without dot segments"}
	}
	rq := &request{method: method, path: path, auth: true}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("apala: %s %s: encoding request: %w", method, path, err)
		}
		rq.body = b
	}
	if method == http.MethodPost && !strings.HasPrefix(path, "/api/auth/") {
		k, err := newID()
		if err != nil {
			return err
		}
		rq.idemKey = k
	}
	_, err := c.send(ctx, rq, out)
	return err
}

// validPath accepts an absolute path, with an optional query, that cannot
// name another host.
func validPath(p string) bool {
	if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || len(p) > 8<<10 {
		return false
	}
	for i := 0; i < len(p); i++ {
		if b := p[i]; b <= ' ' || b == 0x7f || b == '\\' || b == '#' {
			return false
		}
	}
	// No dot segment, escaped or not: a path must not climb out of the
	// base URL's prefix.
	path, _, _ := strings.Cut(p, "?")
	dec, err := url.PathUnescape(path)
	if err != nil {
		return false
	}
	for _, seg := range strings.FieldsFunc(dec, func(r rune) bool { return r == '/' || r == '\\' }) {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// newID returns 16 random bytes as 32 lowercase hex characters, shaped as a
// version 4 UUID without hyphens.
func newID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("apala: reading random bytes: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return hex.EncodeToString(b[:]), nil
}

// send runs rq to completion: token, attempts, retries, the one 401 replay,
// and decoding into out. It returns when the successful attempt was sent.
func (c *Client) send(ctx context.Context, rq *request, out any) (sendTime, error) {
	if ctx == nil {
		return sendTime{}, errNilContext
	}
	var (
		pair     *tokenPair
		replayed bool
		retries  int
	)
	for attempt := 1; ; attempt++ {
		if rq.auth {
			p, err := c.token(ctx)
			if err != nil {
				return sendTime{}, err
			}
			pair = p
			rq.carried(p)
		} else if c.isClosed() {
			return sendTime{}, ErrClosed
		}
		sent := sendTime{mono: c.mono(), wall: c.now()}
		status, hdr, buf, err := c.attempt(ctx, rq, pair, attempt)
		if err == nil && status >= 200 && status < 300 {
			err = c.decode(rq, status, hdr, buf, out)
			putBuf(buf)
			return sent, err
		}
		if err == nil {
			err = c.apiError(rq, status, hdr, buf)
			putBuf(buf)
		}
		if ctx.Err() != nil {
			return sendTime{}, fmt.Errorf("apala: %s %s: %w", rq.method, rq.path, ctx.Err())
		}
		if status == http.StatusUnauthorized && rq.auth && !replayed {
			replayed = true
			c.reject(pair)
			continue
		}
		if !retryable(status, err) || retries >= c.retries {
			return sendTime{}, err
		}
		retries++
		delay := c.backoff(retries)
		var ae *APIError
		if errors.As(err, &ae) && ae.RetryAfter > 0 {
			delay = ae.RetryAfter
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < delay {
			return sendTime{}, err
		}
		c.logAttrs(ctx, slog.LevelWarn, "apala: retrying",
			slog.String("method", rq.method), slog.String("path", rq.path),
			slog.String("reason", retryReason(status)), slog.Duration("delay", delay),
			slog.Int("attempt", attempt+1))
		if err := sleep(ctx, delay); err != nil {
			return sendTime{}, fmt.Errorf("apala: %s %s: %w", rq.method, rq.path, err)
		}
	}
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// attempt sends one HTTP request and reads its answer into a pooled buffer:
// a success body up to maxBody, an error body up to maxErrorBody, drained
// past that. A status of 0 comes with a non-nil error.
func (c *Client) attempt(ctx context.Context, rq *request, pair *tokenPair, n int) (int, http.Header, *bytes.Buffer, error) {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var body io.Reader
	if rq.body != nil {
		body = bytes.NewReader(rq.body)
	}
	req, err := http.NewRequestWithContext(ctx, rq.method, c.baseStr+rq.path, body)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("apala: %s %s: %w", rq.method, rq.path, err)
	}
	h := req.Header
	h["Accept"] = hdrJSON
	h["User-Agent"] = hdrUserAgent
	if rq.body != nil {
		h["Content-Type"] = hdrJSON
	}
	if pair != nil {
		h["Authorization"] = pair.bearer
	}
	if rq.idemKey != "" {
		h["Idempotency-Key"] = []string{rq.idemKey}
	}

	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		c.logAttempt(ctx, rq, 0, start, n)
		return 0, nil, nil, fmt.Errorf("%w: %s %s: %w", ErrConnection, rq.method, rq.path, err)
	}
	defer resp.Body.Close()
	ok := resp.StatusCode >= 200 && resp.StatusCode < 300
	limit := int64(maxErrorBody)
	if ok {
		limit = maxBody
		if resp.ContentLength > maxBody {
			c.logAttempt(ctx, rq, resp.StatusCode, start, n)
			return 0, nil, nil, fmt.Errorf("apala: %s %s: response body of %d bytes exceeds the %d-byte limit", rq.method, rq.path, resp.ContentLength, maxBody)
		}
	}
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	_, err = buf.ReadFrom(io.LimitReader(resp.Body, limit+1))
	c.logAttempt(ctx, rq, resp.StatusCode, start, n)
	if err != nil {
		putBuf(buf)
		// As net/http does for the request, so that every connection
		// failure unwraps to a *url.Error.
		op := rq.method[:1] + strings.ToLower(rq.method[1:])
		err = &url.Error{Op: op, URL: c.baseStr + rq.path, Err: err}
		return 0, nil, nil, fmt.Errorf("%w: %s %s: reading response: %w", ErrConnection, rq.method, rq.path, err)
	}
	if int64(buf.Len()) > limit {
		if ok {
			putBuf(buf)
			return 0, nil, nil, fmt.Errorf("apala: %s %s: response body exceeds the %d-byte limit", rq.method, rq.path, maxBody)
		}
		buf.Truncate(int(limit))
		_, _ = io.CopyN(io.Discard, resp.Body, maxDrain)
	}
	return resp.StatusCode, resp.Header, buf, nil
}

func putBuf(b *bytes.Buffer) {
	if b != nil && b.Cap() <= 1<<20 {
		bufPool.Put(b)
	}
}

// decode reads a success body into out. An empty or malformed body is an
// error when out wants one; the error names the content type, never the body.
func (c *Client) decode(rq *request, status int, hdr http.Header, buf *bytes.Buffer, out any) error {
	if out == nil || status == http.StatusNoContent {
		return nil
	}
	data := bytes.TrimSpace(buf.Bytes())
	if len(data) == 0 {
		return fmt.Errorf("apala: %s %s: %d response has an empty body", rq.method, rq.path, status)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("apala: %s %s: malformed JSON response (%s): %w", rq.method, rq.path, c.mediaType(rq, hdr), err)
	}
	return nil
}

// contentType names the media type of a Content-Type header value.
func contentType(ct string) string {
	if mt, _, err := mime.ParseMediaType(ct); err == nil {
		return mt
	}
	if ct == "" {
		return "no content type"
	}
	return "invalid content type"
}

// apiError builds the *APIError for a non-2xx answer. The message comes only
// from a JSON body, with every secret of the client and of rq scrubbed out.
func (c *Client) apiError(rq *request, status int, hdr http.Header, buf *bytes.Buffer) *APIError {
	e := &APIError{StatusCode: status, Method: rq.method, Path: rq.path, RetryAfter: parseRetryAfter(hdr.Get("Retry-After"), c.now())}
	if buf == nil || buf.Len() == 0 {
		return e
	}
	if v := errorValue(buf.Bytes()); v != nil {
		e.Message = c.serverText(rq, v, maxMessage)
	}
	if e.Message == "" {
		e.contentType = c.mediaType(rq, hdr)
	}
	return e
}

// mediaType names the media type of an answer for an error, scrubbed: the
// header is the server's text too.
func (c *Client) mediaType(rq *request, hdr http.Header) string {
	return c.serverText(rq, contentType(c.scrub(rq, hdr.Get("Content-Type"))), 100)
}

// maxMessage bounds the server's text kept in an error, in bytes.
const maxMessage = 512

// errorValue finds the server's error value in a JSON body: "error",
// "message", "detail", or Phoenix's {"errors": {"detail": ...}}. It is
// decoded, so that no JSON escape can hide a secret from the scrubbing.
func errorValue(body []byte) any {
	var v struct {
		Error   any `json:"error"`
		Message any `json:"message"`
		Detail  any `json:"detail"`
		Errors  any `json:"errors"`
	}
	if json.Unmarshal(body, &v) != nil {
		return nil
	}
	for _, x := range []any{v.Error, v.Message, v.Detail} {
		if present(x) {
			return x
		}
	}
	if m, ok := v.Errors.(map[string]any); ok && present(m["detail"]) {
		return m["detail"]
	}
	if present(v.Errors) {
		return v.Errors
	}
	return nil
}

// present reports whether a decoded JSON value carries any text.
func present(v any) bool {
	s, ok := v.(string)
	return v != nil && (!ok || strings.TrimSpace(s) != "")
}

// serverText renders a decoded JSON value the server sent as one line of
// at most max bytes: secrets scrubbed first (in every string of a nested
// value, then in the whole), control characters blanked, and the cut made
// last, on a character boundary.
func (c *Client) serverText(rq *request, v any, max int) string {
	var s string
	switch v := v.(type) {
	case string:
		s = v
	default:
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if enc.Encode(c.scrubValue(rq, v)) != nil {
			return ""
		}
		s = b.String()
	}
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, c.scrub(rq, s))
	return truncate(strings.TrimSpace(s), max)
}

// scrubValue returns v, a decoded JSON value, with every string in it (map
// keys included) scrubbed.
func (c *Client) scrubValue(rq *request, v any) any {
	switch v := v.(type) {
	case string:
		return c.scrub(rq, v)
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = c.scrubValue(rq, x)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[c.scrub(rq, k)] = c.scrubValue(rq, x)
		}
		return out
	}
	return v
}

// truncate cuts s to at most max bytes and marks the cut, never splitting
// a UTF-8 character.
func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// scrub removes from s, text that came from the server, every secret the
// client holds or rq carried: the API key, the current token pair and the
// pairs rq was sent with. Each secret is looked for raw, JSON-escaped (with
// and without HTML escaping) and URL-escaped, and not only whole: any run
// of 8 or more bytes of one is redacted, so that a server that cuts or
// splits a secret cannot leak a part of it either.
func (c *Client) scrub(rq *request, s string) string {
	if s == "" {
		return s
	}
	secrets := []string{c.apiKey}
	if p := c.pair.Load(); p != nil {
		secrets = append(secrets, p.access, p.refresh)
	}
	if rq != nil {
		for _, p := range rq.pairs {
			secrets = append(secrets, p.access, p.refresh)
		}
	}
	const run = 8
	windows := map[string]bool{}
	for _, secret := range secrets {
		if len(secret) < 4 {
			continue // too short to reveal anything; replacing it would garble the text
		}
		for _, form := range secretForms(secret) {
			if len(form) < run {
				s = strings.ReplaceAll(s, form, "[REDACTED]")
				continue
			}
			for i := 0; i+run <= len(form); i++ {
				windows[form[i:i+run]] = true
			}
		}
	}
	if len(windows) == 0 || len(s) < run {
		return s
	}
	// Mark every byte covered by a window of a secret, then replace each
	// marked stretch.
	var marked []bool
	for i := 0; i+run <= len(s); i++ {
		if windows[s[i:i+run]] {
			if marked == nil {
				marked = make([]bool, len(s))
			}
			for j := i; j < i+run; j++ {
				marked[j] = true
			}
		}
	}
	if marked == nil {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		if !marked[i] {
			b.WriteByte(s[i])
			i++
			continue
		}
		b.WriteString("[REDACTED]")
		for i < len(s) && marked[i] {
			i++
		}
	}
	return b.String()
}

// secretForms returns secret as the server's text may carry it: raw,
// JSON-escaped with and without HTML escaping, and URL-escaped.
func secretForms(secret string) []string {
	forms := []string{secret, url.QueryEscape(secret), url.PathEscape(secret)}
	if b, err := json.Marshal(secret); err == nil {
		forms = append(forms, string(b[1:len(b)-1]))
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if enc.Encode(secret) == nil {
		quoted := strings.TrimSuffix(b.String(), "\n")
		forms = append(forms, quoted[1:len(quoted)-1])
	}
	return forms
}

// parseRetryAfter reads Retry-After as seconds or an HTTP date, capped at
// maxRetryAfter; 0 when absent or unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		if n >= int64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		return time.Duration(n) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	d := t.Sub(now)
	switch {
	case d <= 0:
		return 0
	case d > maxRetryAfter:
		return maxRetryAfter
	}
	return d
}

// retryable reports whether a failed attempt may be tried again.
func retryable(status int, err error) bool {
	switch status {
	case 0:
		return errors.Is(err, ErrConnection) && !permanent(err)
	case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
		http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// permanent reports whether a connection error is one that no retry can
// fix: the server's certificate failed verification.
func permanent(err error) bool {
	var (
		verify    *tls.CertificateVerificationError
		authority x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		roots     x509.SystemRootsError
	)
	return errors.As(err, &verify) || errors.As(err, &authority) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &roots)
}

func retryReason(status int) string {
	if status == 0 {
		return "connection error"
	}
	return strconv.Itoa(status) + " " + http.StatusText(status)
}

// backoff is the wait before retry n (1-based): min·2^(n-1), plus up to half
// of that again as jitter, within [min, max].
func (c *Client) backoff(n int) time.Duration {
	d := c.maxBack
	if n-1 < 32 {
		if b := c.minBack << (n - 1); b > 0 && b < c.maxBack {
			d = b
		}
	}
	if half := int64(d / 2); half > 0 {
		d += time.Duration(mrand.Int63n(half))
	}
	if d > c.maxBack {
		d = c.maxBack
	}
	return d
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// logAttrs logs when a logger is set and enabled at level. Its callers are
// off the hot path; logAttempt, which is on it, checks before building.
func (c *Client) logAttrs(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {
	if c.log != nil && c.log.Enabled(ctx, level) {
		c.log.LogAttrs(ctx, level, msg, attrs...)
	}
}

func (c *Client) logAttempt(ctx context.Context, rq *request, status int, start time.Time, n int) {
	if c.log == nil || !c.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	c.log.LogAttrs(ctx, slog.LevelDebug, "apala: http attempt",
		slog.String("method", rq.method), slog.String("path", rq.path),
		slog.Int("status", status), slog.Duration("duration", time.Since(start)),
		slog.Int("attempt", n))
}

// HTTPClient returns an *http.Client that attaches the access token to every
// request for the base URL's origin, and to no other, for calls this package
// does not wrap. When the server answers such a request with 401, the token
// is dropped and a request whose body can be replayed (GetBody set) is sent
// once more with a new one; otherwise the 401 is returned and the next
// request gets a new token. After Close, every request fails with ErrClosed.
func (c *Client) HTTPClient() *http.Client {
	return &http.Client{
		Transport:     &bearerTransport{c: c},
		CheckRedirect: c.hc.CheckRedirect,
		Jar:           c.hc.Jar,
		Timeout:       c.hc.Timeout,
	}
}

// bearerTransport adds the access token to requests for the client's origin.
type bearerTransport struct{ c *Client }

var _ http.RoundTripper = (*bearerTransport)(nil)

func (t *bearerTransport) base() http.RoundTripper {
	if rt := t.c.hc.Transport; rt != nil {
		return rt
	}
	return http.DefaultTransport
}

// RoundTrip implements http.RoundTripper. It never modifies req.
func (t *bearerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.c.isClosed() {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, ErrClosed
	}
	if req.URL == nil || origin(req.URL) != t.c.origin {
		return t.base().RoundTrip(req)
	}
	p, err := t.c.token(req.Context())
	if err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	resp, err := t.base().RoundTrip(withBearer(req, p, req.Body))
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	// The server refused p: whatever follows, the next request gets a new
	// token (compare-and-swap: one refreshed meanwhile is kept).
	t.c.reject(p)
	var body io.ReadCloser
	if req.Body != nil && req.Body != http.NoBody {
		if req.GetBody == nil {
			return resp, nil // cannot replay: the 401 is the answer
		}
		if body, err = req.GetBody(); err != nil {
			return resp, nil
		}
	}
	_, _ = io.CopyN(io.Discard, resp.Body, maxErrorBody)
	resp.Body.Close()
	if p, err = t.c.token(req.Context()); err != nil {
		if body != nil {
			body.Close()
		}
		return nil, err
	}
	return t.base().RoundTrip(withBearer(req, p, body))
}

func withBearer(req *http.Request, p *tokenPair, body io.ReadCloser) *http.Request {
	r := req.Clone(req.Context())
	r.Body = body
	r.Header["Authorization"] = p.bearer
	return r
}

// isUUID reports whether s is a UUID in its canonical 8-4-4-4-12 hex form.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isHex(s[i]) {
				return false
			}
		}
	}
	return true
}

func isHex(b byte) bool {
	return '0' <= b && b <= '9' || 'a' <= b && b <= 'f' || 'A' <= b && b <= 'F'
}

// Channel is the channel a message travels on.
type Channel string

// Channels.
const (
	ChannelSMS   Channel = "SMS"
	ChannelEmail Channel = "EMAIL"
	ChannelOther Channel = "OTHER"
)

// Score is the quality of a message as judged in feedback.
type Score string

// Scores.
const (
	ScoreGood    Score = "good"
	ScoreBad     Score = "bad"
	ScoreNeutral Score = "neutral"
)

// PositiveReward is an outcome a message led to, reported in feedback.
type PositiveReward string

// Positive rewards.
const (
	RewardUpdatingAccountNumber    PositiveReward = "updating_account_number"
	RewardSendingPDFBankStatements PositiveReward = "sending_pdf_bank_statements"
	RewardLinkingChirp             PositiveReward = "linking_chirp"
	RewardSigningLoanAgreement     PositiveReward = "signing_loan_agreement"
)

// CreditScoreBin is the customer's credit score range.
type CreditScoreBin string

// Credit score ranges.
const (
	CreditScore500To550 CreditScoreBin = "SCORE_500_550"
	CreditScore550To600 CreditScoreBin = "SCORE_550_600"
	CreditScore600To650 CreditScoreBin = "SCORE_600_650"
	CreditScore650To700 CreditScoreBin = "SCORE_650_700"
	CreditScore700To750 CreditScoreBin = "SCORE_700_750"
	CreditScore750To800 CreditScoreBin = "SCORE_750_800"
	CreditScore800Plus  CreditScoreBin = "SCORE_800_PLUS"
	CreditScoreUnknown  CreditScoreBin = "UNKNOWN"
)

// LoanAmountBin is the range of the loan amount the customer asked for.
type LoanAmountBin string

// Loan amount ranges.
const (
	LoanAmount0To500      LoanAmountBin = "AMOUNT_0_500"
	LoanAmount500To1000   LoanAmountBin = "AMOUNT_500_1000"
	LoanAmount1000To2000  LoanAmountBin = "AMOUNT_1000_2000"
	LoanAmount2000To5000  LoanAmountBin = "AMOUNT_2000_5000"
	LoanAmount5000To10000 LoanAmountBin = "AMOUNT_5000_10000"
	LoanAmount10000Plus   LoanAmountBin = "AMOUNT_10000_PLUS"
)

// AgeBin is the customer's age range.
type AgeBin string

// Age ranges.
const (
	Age18To25 AgeBin = "AGE_18_25"
	Age25To30 AgeBin = "AGE_25_30"
	Age30To35 AgeBin = "AGE_30_35"
	Age35To40 AgeBin = "AGE_35_40"
	Age40To45 AgeBin = "AGE_40_45"
	Age45To50 AgeBin = "AGE_45_50"
	Age50To55 AgeBin = "AGE_50_55"
	Age55To60 AgeBin = "AGE_55_60"
	Age60Plus AgeBin = "AGE_60_PLUS"
)

// MonthlyIncomeBin is the customer's monthly income range.
type MonthlyIncomeBin string

// Monthly income ranges.
const (
	MonthlyIncome0To2000     MonthlyIncomeBin = "INCOME_0_2000"
	MonthlyIncome2000To3000  MonthlyIncomeBin = "INCOME_2000_3000"
	MonthlyIncome3000To4000  MonthlyIncomeBin = "INCOME_3000_4000"
	MonthlyIncome4000To5000  MonthlyIncomeBin = "INCOME_4000_5000"
	MonthlyIncome5000To6000  MonthlyIncomeBin = "INCOME_5000_6000"
	MonthlyIncome6000To8000  MonthlyIncomeBin = "INCOME_6000_8000"
	MonthlyIncome8000To10000 MonthlyIncomeBin = "INCOME_8000_10000"
	MonthlyIncome10000Plus   MonthlyIncomeBin = "INCOME_10000_PLUS"
)

// ApplicationReason is why the customer applied for the loan (1.x servers).
type ApplicationReason string

// Application reasons.
const (
	ReasonDebtConsolidation ApplicationReason = "DEBT_CONSOLIDATION"
	ReasonHomeImprovement   ApplicationReason = "HOME_IMPROVEMENT"
	ReasonMedicalEmergency  ApplicationReason = "MEDICAL_EMERGENCY"
	ReasonCarRepair         ApplicationReason = "CAR_REPAIR"
	ReasonMovingExpenses    ApplicationReason = "MOVING_EXPENSES"
	ReasonEducation         ApplicationReason = "EDUCATION"
	ReasonBusinessExpenses  ApplicationReason = "BUSINESS_EXPENSES"
	ReasonEmergencyExpenses ApplicationReason = "EMERGENCY_EXPENSES"
	ReasonVacation          ApplicationReason = "VACATION"
	ReasonWedding           ApplicationReason = "WEDDING"
	ReasonOther             ApplicationReason = "OTHER"
)

var (
	channels     = []Channel{ChannelSMS, ChannelEmail, ChannelOther}
	scores       = []Score{ScoreGood, ScoreBad, ScoreNeutral}
	rewards      = []PositiveReward{RewardUpdatingAccountNumber, RewardSendingPDFBankStatements, RewardLinkingChirp, RewardSigningLoanAgreement}
	creditScores = []CreditScoreBin{CreditScore500To550, CreditScore550To600, CreditScore600To650, CreditScore650To700, CreditScore700To750, CreditScore750To800, CreditScore800Plus, CreditScoreUnknown}
	loanAmounts  = []LoanAmountBin{LoanAmount0To500, LoanAmount500To1000, LoanAmount1000To2000, LoanAmount2000To5000, LoanAmount5000To10000, LoanAmount10000Plus}
	ages         = []AgeBin{Age18To25, Age25To30, Age30To35, Age35To40, Age40To45, Age45To50, Age50To55, Age55To60, Age60Plus}
	incomes      = []MonthlyIncomeBin{MonthlyIncome0To2000, MonthlyIncome2000To3000, MonthlyIncome3000To4000, MonthlyIncome4000To5000, MonthlyIncome5000To6000, MonthlyIncome6000To8000, MonthlyIncome8000To10000, MonthlyIncome10000Plus}
	reasons      = []ApplicationReason{ReasonDebtConsolidation, ReasonHomeImprovement, ReasonMedicalEmergency, ReasonCarRepair, ReasonMovingExpenses, ReasonEducation, ReasonBusinessExpenses, ReasonEmergencyExpenses, ReasonVacation, ReasonWedding, ReasonOther}
)

// checkOneOf returns a *ValidationError unless v is in set; empty is allowed
// when optional.
func checkOneOf[T ~string](field string, v T, optional bool, set []T) error {
	if v == "" && optional {
		return nil
	}
	for _, s := range set {
		if v == s {
			return nil
		}
	}
	if v == "" {
		return &ValidationError{Field: field, Reason: "required"}
	}
	return &ValidationError{Field: field, Reason: fmt.Sprintf("%q is not one of %v", string(v), set)}
}

// Message is one message of a conversation with a customer.
type Message struct {
	Content       string    // required
	Channel       Channel   // required, except for the candidate of OptimizeMessage
	MessageID     string    // generated when empty: 32 lowercase hex characters
	SendTimestamp time.Time // now (UTC) when zero
	ReplyOrNot    bool      // whether the message is a reply from the customer
}

// CustomerMetadata describes the customer, to sharpen OptimizeMessage. Every
// field is optional: nil or "" leaves it out of the request.
type CustomerMetadata struct {
	IsRepeatBorrower       *int // 0 or 1
	StateID                *int // 1 or more
	CreditScoreBin         CreditScoreBin
	RequestedLoanAmountBin LoanAmountBin
	AgeBin                 AgeBin
	MonthlyIncomeBin       MonthlyIncomeBin
	ApplicationReason      ApplicationReason // 1.x servers only
}

// MessageRequest is the input of ProcessMessage and OptimizeMessage: a
// conversation so far and a candidate message to send next.
type MessageRequest struct {
	Messages    []Message         // the conversation so far, oldest first; may be empty
	Candidate   Message           // the message to analyse
	CustomerID  string            // the customer's UUID
	CompanyGUID string            // the company's UUID; the client's CompanyGUID() when empty
	ZipCode     string            // optional; 5 digits when given
	Metadata    *CustomerMetadata // optional; sent by OptimizeMessage only
}

// CandidateMessage is the candidate message as the server returns it.
type CandidateMessage struct {
	Content   string  `json:"content"`
	Channel   Channel `json:"channel"`
	MessageID string  `json:"message_id"`
}

// ProcessingResponse is the answer of ProcessMessage.
type ProcessingResponse struct {
	Company          string           `json:"company"`
	CustomerID       string           `json:"customer_id"`
	CandidateMessage CandidateMessage `json:"candidate_message"`
}

// OptimizationResponse is the answer of OptimizeMessage: a better wording of
// the candidate and the channel to send it on. Report how it fared with
// SubmitFeedback, quoting MessageID. RecommendedChannel is kept as the
// server sent it, also when it is none of the Channel constants.
type OptimizationResponse struct {
	MessageID          string  `json:"message_id"`
	OptimizedMessage   string  `json:"optimized_message"`
	OriginalMessage    string  `json:"original_message"`
	RecommendedChannel Channel `json:"recommended_channel"`
}

// Feedback reports how a message fared.
type Feedback struct {
	MessageID         string // required: the MessageID of an OptimizationResponse
	CustomerResponded bool
	Score             Score            // required
	ActualSentMessage string           // optional: the text that was sent
	PositiveRewards   []PositiveReward // optional
	SendTimestamp     time.Time        // optional; zero leaves it out
	ReplyTimestamp    time.Time        // optional; zero leaves it out
}

// FeedbackResponse is the feedback entry the server stored.
type FeedbackResponse struct {
	ID                string
	MessageID         string
	CustomerResponded bool
	Score             Score
	ActualSentMessage string
	PositiveRewards   []PositiveReward
	SendTimestamp     time.Time // zero when null or absent
	ReplyTimestamp    time.Time // zero when null or absent
	InsertedAt        time.Time
}

// BulkFeedbackResponse is the answer of SubmitFeedbackBulk.
type BulkFeedbackResponse struct {
	Success  bool
	Count    int
	Feedback []FeedbackResponse
}

// wireMessage is a Message as API.md puts it on the wire.
type wireMessage struct {
	Content       string  `json:"content"`
	Channel       Channel `json:"channel"`
	MessageID     string  `json:"message_id"`
	SendTimestamp string  `json:"send_timestamp"`
	ReplyOrNot    string  `json:"reply_or_not"` // the strings "true" and "false"
}

// wireFeedback is a Feedback item on the wire.
type wireFeedback struct {
	MessageID         string           `json:"message_id"`
	CustomerResponded bool             `json:"customer_responded"`
	Score             Score            `json:"score"`
	ActualSentMessage string           `json:"actual_sent_message,omitempty"`
	PositiveRewards   []PositiveReward `json:"positive_rewards,omitempty"`
	SendTimestamp     string           `json:"send_timestamp,omitempty"`
	ReplyTimestamp    string           `json:"reply_timestamp,omitempty"`
}

// wireFeedbackResponse is a stored feedback entry as the server sends it;
// pointers tell a missing required field from a zero one.
type wireFeedbackResponse struct {
	ID                *string          `json:"id"`
	MessageID         *string          `json:"message_id"`
	CustomerResponded *bool            `json:"customer_responded"`
	Score             *Score           `json:"score"`
	ActualSentMessage *string          `json:"actual_sent_message"`
	PositiveRewards   []PositiveReward `json:"positive_rewards"`
	SendTimestamp     *string          `json:"send_timestamp"`
	ReplyTimestamp    *string          `json:"reply_timestamp"`
	InsertedAt        *string          `json:"inserted_at"`
}

// wireTime formats a request timestamp as RFC 3339 with a numeric offset and
// at most microseconds, as Python's isoformat writes it and every server
// version reads it: 2025-01-15T10:30:00+00:00. It goes through the
// standard library's fast RFC 3339 path, then spells UTC as +00:00.
func wireTime(t time.Time) string {
	var buf [40]byte
	b := t.Truncate(time.Microsecond).AppendFormat(buf[:0], time.RFC3339Nano)
	if n := len(b) - 1; b[n] == 'Z' {
		b = append(b[:n], "+00:00"...)
	}
	return string(b)
}

// parseTime reads a response timestamp leniently: RFC 3339 with Z or an
// offset, with or without fractional seconds, or with no offset (UTC), as
// Python's isoformat writes it.
func parseTime(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02 15:04:05Z07:00"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	// The value is the server's text: named, never quoted.
	return time.Time{}, errors.New("not an ISO 8601 timestamp")
}

// check validates m. Its errors name the field under the message, as in
// "Channel": the caller prefixes the message's own name.
func (m *Message) check(needChannel bool) *ValidationError {
	if strings.TrimSpace(m.Content) == "" {
		return &ValidationError{Field: "Content", Reason: "required"}
	}
	ve, _ := checkOneOf("Channel", m.Channel, !needChannel, channels).(*ValidationError)
	return ve
}

// within prefixes the field of e with the name of the value holding it.
func (e *ValidationError) within(name string) error {
	e.Field = name + "." + e.Field
	return e
}

// toWire puts a checked m on the wire, with its id and send time filled in
// when unset.
func (c *Client) toWire(m Message) (wireMessage, error) {
	w := wireMessage{Content: m.Content, Channel: m.Channel, MessageID: m.MessageID, ReplyOrNot: strconv.FormatBool(m.ReplyOrNot)}
	if w.MessageID == "" {
		id, err := newID()
		if err != nil {
			return wireMessage{}, err
		}
		w.MessageID = id
	}
	ts := m.SendTimestamp
	if ts.IsZero() {
		ts = c.now().UTC()
	}
	w.SendTimestamp = wireTime(ts)
	return w, nil
}

// messageBody checks all of req, metadata included, before any work, and
// returns its shared parts on the wire. With
// contentOnly (the optimizer) the candidate is only checked: its content is
// all that is sent, and cand holds just that.
func (c *Client) messageBody(req MessageRequest, contentOnly bool) (company string, msgs []wireMessage, cand wireMessage, err error) {
	company = req.CompanyGUID
	if company == "" {
		company = c.company
	}
	switch {
	case company == "":
		return "", nil, cand, &ValidationError{Field: "CompanyGUID", Reason: "required: set it in the request, with WithCompanyGUID or in " + EnvCompanyGUID}
	case !isUUID(company):
		return "", nil, cand, &ValidationError{Field: "CompanyGUID", Reason: "not a UUID"}
	case !isUUID(req.CustomerID):
		return "", nil, cand, &ValidationError{Field: "CustomerID", Reason: "not a UUID"}
	case req.ZipCode != "" && !isZip(req.ZipCode):
		return "", nil, cand, &ValidationError{Field: "ZipCode", Reason: "want exactly 5 digits"}
	}
	for i := range req.Messages {
		if err := req.Messages[i].check(true); err != nil {
			return "", nil, cand, err.within(fmt.Sprintf("Messages[%d]", i))
		}
	}
	if err := req.Candidate.check(!contentOnly); err != nil {
		return "", nil, cand, err.within("Candidate")
	}
	if err := req.Metadata.check(); err != nil {
		return "", nil, cand, err
	}
	msgs = make([]wireMessage, len(req.Messages))
	for i, m := range req.Messages {
		if msgs[i], err = c.toWire(m); err != nil {
			return "", nil, cand, err
		}
	}
	if contentOnly {
		return company, msgs, wireMessage{Content: req.Candidate.Content}, nil
	}
	cand, err = c.toWire(req.Candidate)
	return company, msgs, cand, err
}

func isZip(s string) bool {
	if len(s) != 5 {
		return false
	}
	for i := 0; i < 5; i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func (m *CustomerMetadata) check() error {
	if m == nil {
		return nil
	}
	if m.IsRepeatBorrower != nil && *m.IsRepeatBorrower != 0 && *m.IsRepeatBorrower != 1 {
		return &ValidationError{Field: "Metadata.IsRepeatBorrower", Reason: "want 0 or 1"}
	}
	if m.StateID != nil && *m.StateID < 1 {
		return &ValidationError{Field: "Metadata.StateID", Reason: "want 1 or more"}
	}
	for _, err := range []error{
		checkOneOf("Metadata.CreditScoreBin", m.CreditScoreBin, true, creditScores),
		checkOneOf("Metadata.RequestedLoanAmountBin", m.RequestedLoanAmountBin, true, loanAmounts),
		checkOneOf("Metadata.AgeBin", m.AgeBin, true, ages),
		checkOneOf("Metadata.MonthlyIncomeBin", m.MonthlyIncomeBin, true, incomes),
		checkOneOf("Metadata.ApplicationReason", m.ApplicationReason, true, reasons),
	} {
		if err != nil {
			return err
		}
	}
	return nil
}

// post sends one API call: a POST with an Idempotency-Key, through the same
// path as Do.
func (c *Client) post(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("apala: POST %s: encoding request: %w", path, err)
	}
	key, err := newID()
	if err != nil {
		return err
	}
	_, err = c.send(ctx, &request{method: http.MethodPost, path: path, body: body, auth: true, idemKey: key}, out)
	return err
}

func missing(path, field string) error {
	return fmt.Errorf("apala: POST %s: response is missing %s", path, field)
}

// ProcessMessage sends a conversation and its candidate message to message
// processing (POST /api/message_processing). Missing message ids are
// generated and missing send times set to now. req is checked first: a
// *ValidationError means nothing was sent. req.Metadata is not sent.
func (c *Client) ProcessMessage(ctx context.Context, req MessageRequest) (*ProcessingResponse, error) {
	const path = "/api/message_processing"
	company, msgs, cand, err := c.messageBody(req, false)
	if err != nil {
		return nil, err
	}
	in := struct {
		Company          string        `json:"company"`
		CustomerID       string        `json:"customer_id"`
		ZipCode          string        `json:"zip_code,omitempty"`
		Messages         []wireMessage `json:"messages"`
		CandidateMessage wireMessage   `json:"candidate_message"`
	}{company, req.CustomerID, req.ZipCode, msgs, cand}
	var out ProcessingResponse
	if err := c.post(ctx, path, in, &out); err != nil {
		return nil, err
	}
	switch {
	case out.Company == "":
		return nil, missing(path, "company")
	case out.CustomerID == "":
		return nil, missing(path, "customer_id")
	case out.CandidateMessage.Content == "":
		return nil, missing(path, "candidate_message.content")
	}
	return &out, nil
}

// OptimizeMessage asks for a better wording of req.Candidate and the channel
// to send it on (POST /api/message_optimizer). Only the candidate's content
// is sent; the metadata goes flat at the top level, each field left out when
// unset. req is checked first: a *ValidationError means nothing was sent.
func (c *Client) OptimizeMessage(ctx context.Context, req MessageRequest) (*OptimizationResponse, error) {
	const path = "/api/message_optimizer"
	company, msgs, cand, err := c.messageBody(req, true)
	if err != nil {
		return nil, err
	}
	in := optimizeBody{Company: company, CustomerID: req.CustomerID, ZipCode: req.ZipCode, Messages: msgs, CandidateMessage: cand.Content}
	if m := req.Metadata; m != nil {
		in.IsRepeatBorrower, in.StateID = m.IsRepeatBorrower, m.StateID
		in.CreditScoreBin, in.RequestedLoanAmountBin = m.CreditScoreBin, m.RequestedLoanAmountBin
		in.AgeBin, in.MonthlyIncomeBin, in.ApplicationReason = m.AgeBin, m.MonthlyIncomeBin, m.ApplicationReason
	}
	var out OptimizationResponse
	if err := c.post(ctx, path, &in, &out); err != nil {
		return nil, err
	}
	switch {
	case out.MessageID == "":
		return nil, missing(path, "message_id")
	case out.OptimizedMessage == "":
		return nil, missing(path, "optimized_message")
	case out.RecommendedChannel == "":
		// A channel this version does not know is kept as sent.
		return nil, missing(path, "recommended_channel")
	}
	return &out, nil
}

type optimizeBody struct {
	Company          string        `json:"company"`
	CustomerID       string        `json:"customer_id"`
	ZipCode          string        `json:"zip_code,omitempty"`
	Messages         []wireMessage `json:"messages"`
	CandidateMessage string        `json:"candidate_message"`

	IsRepeatBorrower       *int              `json:"is_repeat_borrower,omitempty"`
	StateID                *int              `json:"state_id,omitempty"`
	CreditScoreBin         CreditScoreBin    `json:"credit_score_bin,omitempty"`
	RequestedLoanAmountBin LoanAmountBin     `json:"requested_loan_amount_bin,omitempty"`
	AgeBin                 AgeBin            `json:"age_bin,omitempty"`
	MonthlyIncomeBin       MonthlyIncomeBin  `json:"monthly_income_bin,omitempty"`
	ApplicationReason      ApplicationReason `json:"application_reason,omitempty"`
}

func (fb Feedback) toWire(field string) (wireFeedback, error) {
	if fb.MessageID == "" {
		return wireFeedback{}, &ValidationError{Field: field + "MessageID", Reason: "required"}
	}
	if err := checkOneOf(field+"Score", fb.Score, false, scores); err != nil {
		return wireFeedback{}, err
	}
	for i, r := range fb.PositiveRewards {
		if err := checkOneOf(fmt.Sprintf("%sPositiveRewards[%d]", field, i), r, false, rewards); err != nil {
			return wireFeedback{}, err
		}
	}
	w := wireFeedback{MessageID: fb.MessageID, CustomerResponded: fb.CustomerResponded, Score: fb.Score,
		ActualSentMessage: fb.ActualSentMessage, PositiveRewards: fb.PositiveRewards}
	if !fb.SendTimestamp.IsZero() {
		w.SendTimestamp = wireTime(fb.SendTimestamp)
	}
	if !fb.ReplyTimestamp.IsZero() {
		w.ReplyTimestamp = wireTime(fb.ReplyTimestamp)
	}
	return w, nil
}

func (w *wireFeedbackResponse) decode(path, field string) (FeedbackResponse, error) {
	switch {
	case w.ID == nil || *w.ID == "":
		return FeedbackResponse{}, missing(path, field+"id")
	case w.MessageID == nil:
		return FeedbackResponse{}, missing(path, field+"message_id")
	case w.CustomerResponded == nil:
		return FeedbackResponse{}, missing(path, field+"customer_responded")
	case w.Score == nil:
		return FeedbackResponse{}, missing(path, field+"score")
	case w.InsertedAt == nil:
		return FeedbackResponse{}, missing(path, field+"inserted_at")
	}
	r := FeedbackResponse{ID: *w.ID, MessageID: *w.MessageID, CustomerResponded: *w.CustomerResponded,
		Score: *w.Score, PositiveRewards: w.PositiveRewards}
	if w.ActualSentMessage != nil {
		r.ActualSentMessage = *w.ActualSentMessage
	}
	for _, t := range []struct {
		name string
		in   *string
		out  *time.Time
	}{{"send_timestamp", w.SendTimestamp, &r.SendTimestamp}, {"reply_timestamp", w.ReplyTimestamp, &r.ReplyTimestamp}, {"inserted_at", w.InsertedAt, &r.InsertedAt}} {
		if t.in == nil || *t.in == "" {
			continue
		}
		v, err := parseTime(*t.in)
		if err != nil {
			return FeedbackResponse{}, fmt.Errorf("apala: POST %s: %s%s: %w", path, field, t.name, err)
		}
		*t.out = v
	}
	if r.PositiveRewards == nil {
		r.PositiveRewards = []PositiveReward{}
	}
	return r, nil
}

// SubmitFeedback reports how a message fared (POST /api/feedback). Several
// entries may be sent for one MessageID over time. fb is checked first: a
// *ValidationError means nothing was sent.
func (c *Client) SubmitFeedback(ctx context.Context, fb Feedback) (*FeedbackResponse, error) {
	const path = "/api/feedback"
	in, err := fb.toWire("")
	if err != nil {
		return nil, err
	}
	var out wireFeedbackResponse
	if err := c.post(ctx, path, &in, &out); err != nil {
		return nil, err
	}
	r, err := out.decode(path, "")
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// SubmitFeedbackBulk reports many feedback entries in one call (POST
// /api/feedback/bulk). items must not be empty, and each is checked first:
// a *ValidationError naming the item (as in "Items[3].Score") means nothing
// was sent.
//
// The answer is never silently partial: when the server reports a failure or
// stored fewer entries than were sent, SubmitFeedbackBulk returns its answer
// together with an error matching ErrPartial.
func (c *Client) SubmitFeedbackBulk(ctx context.Context, items []Feedback) (*BulkFeedbackResponse, error) {
	const path = "/api/feedback/bulk"
	if len(items) == 0 {
		return nil, &ValidationError{Field: "Items", Reason: "empty list"}
	}
	in := struct {
		Feedback []wireFeedback `json:"feedback"`
	}{make([]wireFeedback, len(items))}
	for i, fb := range items {
		w, err := fb.toWire(fmt.Sprintf("Items[%d].", i))
		if err != nil {
			return nil, err
		}
		in.Feedback[i] = w
	}
	var out struct {
		Success  *bool                  `json:"success"`
		Count    *int                   `json:"count"`
		Feedback []wireFeedbackResponse `json:"feedback"`
	}
	if err := c.post(ctx, path, &in, &out); err != nil {
		return nil, err
	}
	if out.Success == nil {
		return nil, missing(path, "success")
	}
	if out.Count == nil {
		return nil, missing(path, "count")
	}
	r := &BulkFeedbackResponse{Success: *out.Success, Count: *out.Count, Feedback: make([]FeedbackResponse, len(out.Feedback))}
	for i := range out.Feedback {
		fr, err := out.Feedback[i].decode(path, fmt.Sprintf("feedback[%d].", i))
		if err != nil {
			return nil, err
		}
		r.Feedback[i] = fr
	}
	switch {
	case !r.Success:
		return r, fmt.Errorf("%w: POST %s: the server reported failure (count %d of %d)", ErrPartial, path, r.Count, len(items))
	case r.Count != len(items) || len(r.Feedback) != len(items):
		return r, fmt.Errorf("%w: POST %s: the server stored %d of %d entries (%d returned)", ErrPartial, path, r.Count, len(items), len(r.Feedback))
	}
	return r, nil
}
