// This file holds, in this order, the Client and its options, the HTTP
// round trip (attempts, retries, the one 401 replay, errors and the scrubbing
// of server text), and the message and feedback calls with their checks and
// wire types. The token lifecycle is in auth.go; the fake server for tests in
// fake.go.

package apala

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	mrand "math/rand"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Defaults and the environment variables read by NewClientFromEnv.
const (
	// DefaultBaseURL is the server's address when none is given: a
	// development server on this machine.
	DefaultBaseURL = "http://localhost:4000"
	// DefaultRefreshMargin is how long before expiry a token is refreshed.
	DefaultRefreshMargin = 60 * time.Second
	// EnvAPIKey names the variable holding the API key.
	EnvAPIKey = "APALA_API_KEY"
	// EnvBaseURL names the variable holding the base URL (optional).
	EnvBaseURL = "APALA_BASE_URL"
	// EnvCompanyGUID names the variable holding the company GUID (optional).
	EnvCompanyGUID = "APALA_COMPANY_GUID"
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
	maxMessage    = 512      // bytes of the server's text kept in an error
	scrubRun      = 8        // the length of the runs of a secret that scrub redacts

	userAgent = "apala-go/1"
)

// The API's endpoints, every one a POST.
const (
	pathToken        = "/api/auth/token"
	pathRefresh      = "/api/auth/refresh"
	pathProcess      = "/api/message_processing"
	pathOptimize     = "/api/message_optimizer"
	pathFeedback     = "/api/feedback"
	pathFeedbackBulk = "/api/feedback/bulk"
)

// Clocks, replaced by tests so that expiry tests never sleep; read by NewClient.
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
	// connection, which also unwraps to the *url.Error underneath.
	ErrConnection = errors.New("apala: connection failed")
	// ErrNotAuthenticated is RefreshAccessToken's error when no refresh token is held.
	ErrNotAuthenticated = errors.New("apala: not authenticated: no refresh token held")
	// ErrConfig matches every error about the program's setup, as opposed
	// to the data of a call (a *ValidationError): an invalid option value,
	// a refused base URL, no API key, no company GUID for a message call.
	// Nothing is sent. A service maps it to its own 500.
	ErrConfig = errors.New("apala: invalid configuration")
	// ErrMissingAPIKey is returned by NewClient for an empty API key; it
	// matches ErrConfig.
	ErrMissingAPIKey = fmt.Errorf("%w: missing API key", ErrConfig)
	// ErrClosed is returned by every call made after Close.
	ErrClosed = errors.New("apala: client closed")
	// ErrPartial matches the error of SubmitFeedbackBulk when the server
	// reported a failure or stored fewer entries than were sent; the
	// server's full answer is returned with it.
	ErrPartial = errors.New("apala: partial success")

	// errNilContext is returned, instead of a panic, for a nil context.
	errNilContext = errors.New("apala: nil context")
)

// APIError is the error for every answer of the server outside 2xx. Match
// its kind with errors.Is and ErrUnauthorized, ErrForbidden, ErrRateLimited
// or ErrServer, or read it with errors.As.
type APIError struct {
	// StatusCode is the answer's HTTP status.
	StatusCode int
	// Method is the request's method, as in "POST".
	Method string
	// Path is the request's path under the base URL, as in "/api/feedback".
	Path string
	// Message is the server's error text, from a JSON body's "error",
	// "message" or "detail" (Phoenix's {"errors": {"detail": ...}}
	// included), scrubbed of every secret and cut to 512 bytes; empty when
	// the body was not JSON.
	Message string
	// RetryAfter is the wait the server asked for in Retry-After (seconds
	// or an HTTP date), capped at 60s; 0 when absent.
	RetryAfter time.Duration
	// RequestID is the answer's X-Request-Id, when sent: quote it in a
	// support ticket.
	RequestID string

	contentType string // named in Error when the body was not JSON
}

// Error describes the failure: method, path, status and the server's message,
// or the content type of a body that was not JSON (never the body itself),
// and the request id when the server sent one.
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
	if e.RequestID != "" {
		fmt.Fprintf(&b, " (request id %s)", e.RequestID)
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

// ValidationError reports data of a call refused before sending anything: a
// field of a request, as the Go type spells it, with the item's index in a
// list ("Messages[2].Channel"), or Do's path. A service maps it to its own
// 400; a problem of the program's setup is ErrConfig instead.
type ValidationError struct{ Field, Reason string }

// Error names the field and the reason.
func (e *ValidationError) Error() string { return "apala: invalid " + e.Field + ": " + e.Reason }

// within names e's field under the value holding it, as in
// "Messages[2].Channel": each check names fields relative to what it checks.
func (e *ValidationError) within(name string) *ValidationError {
	e.Field = name + "." + e.Field
	return e
}

// ClientOption configures a Client: NewClient, NewClientFromEnv and
// FakeServer.NewClient take it. Each With* function returns the kind of
// option its place allows, so that an option given where it does not apply
// does not compile. A nil option is ignored.
type ClientOption interface{ client(*config) }

// CallOption configures one call: the message and feedback calls and Do
// take it, and it applies to that call alone, over the client's settings.
type CallOption interface{ call(*config) }

// Option configures a client or one call: both places take it.
type Option interface {
	ClientOption
	CallOption
}

type (
	clientOption func(*config)
	callOption   func(*config)
	option       func(*config)
)

func (o clientOption) client(c *config) { o(c) }
func (o callOption) call(c *config)     { o(c) }
func (o option) client(c *config)       { o(c) }
func (o option) call(c *config)         { o(c) }

// config is every setting an option can change: a client's, and a copy of
// it with a call's options applied.
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
	header     http.Header // extra headers; replaced, never modified, so a call's copy cannot touch the client's
	hooks      Hooks
	keyFunc    func(context.Context) (string, error)
	store      TokenStore

	idemKey string        // a call's Idempotency-Key; "" generates one
	info    *ResponseInfo // filled when a call returns; nil: not asked for
	err     error         // the first invalid option, an ErrConfig
}

// checked returns set when the argument is ok; otherwise a setter recording
// the option as invalid, unless an earlier option was.
func checked(option string, ok bool, reason string, set func(*config)) func(*config) {
	return func(c *config) {
		switch {
		case ok:
			set(c)
		case c.err == nil:
			c.err = fmt.Errorf("%w: %s: %s", ErrConfig, option, reason)
		}
	}
}

// callConfig returns the settings of one call: the client's, or a copy with
// opts applied. Every call starts with it, so that the ResponseInfo it asks
// for is emptied even when the call is refused before sending.
func (c *Client) callConfig(opts []CallOption) (*config, error) {
	if len(opts) == 0 {
		return &c.cfg, nil
	}
	cfg := c.cfg
	for _, o := range opts {
		if o != nil {
			o.call(&cfg)
		}
	}
	if cfg.info != nil {
		*cfg.info = ResponseInfo{}
	}
	if cfg.err != nil {
		return nil, cfg.err
	}
	return &cfg, nil
}

// WithBaseURL sets the server's address, an absolute http or https URL; a
// path prefix is kept (https://gw.example/apala + /api/...). Default
// DefaultBaseURL.
func WithBaseURL(url string) ClientOption {
	return clientOption(func(c *config) { c.baseURL = url })
}

// WithHTTPClient sets the *http.Client that carries requests, for a custom
// CA, client certificates (mTLS) or a proxy of your own. The client works on
// a copy, which never follows redirects; Close leaves its idle connections
// to you. Nil means a client of its own, with a transport cloned from
// http.DefaultTransport (which honours HTTPS_PROXY and NO_PROXY).
func WithHTTPClient(hc *http.Client) ClientOption {
	return clientOption(func(c *config) { c.hc = hc })
}

// WithLogger sets the logger: each HTTP attempt at Debug, authentication and
// refresh at Info, retries (and retries not made), refused refreshes and
// failed token requests at Warn, never a secret. Nil, the default, is none.
func WithLogger(l *slog.Logger) ClientOption {
	return clientOption(func(c *config) { c.logger = l })
}

// WithRefreshMargin sets how long before expiry the token is refreshed in the
// background. It is capped at half the token's lifetime. Default
// DefaultRefreshMargin; negative is invalid.
func WithRefreshMargin(d time.Duration) ClientOption {
	return clientOption(checked("WithRefreshMargin", d >= 0, "negative margin", func(c *config) { c.margin = d }))
}

// WithMaxRetries sets how many more attempts may follow a failed first one
// (a connection error, 408, 429, 500, 502, 503, 504), within the client's
// retry budget. Default 2; 0 disables retries; negative is invalid.
func WithMaxRetries(n int) Option {
	return option(checked("WithMaxRetries", n >= 0, "negative count", func(c *config) { c.maxRetries = n }))
}

// WithRetryBackoff sets the bounds of the jittered exponential backoff
// between retries. Default 500ms and 8s; min must be positive and max at
// least min.
func WithRetryBackoff(min, max time.Duration) Option {
	return option(checked("WithRetryBackoff", 0 < min && min <= max, "want 0 < min <= max", func(c *config) {
		c.minBackoff, c.maxBackoff = min, max
	}))
}

// WithTimeout sets the time limit of each HTTP attempt, the reading of its
// answer included. Default 60s; 0 means no limit but the caller's context;
// negative is invalid.
func WithTimeout(d time.Duration) Option {
	return option(checked("WithTimeout", d >= 0, "negative timeout", func(c *config) { c.timeout = d }))
}

// WithCompanyGUID sets the company GUID sent as "company" in message calls
// whose request names none. It must be a UUID; empty means none.
func WithCompanyGUID(guid string) ClientOption {
	return clientOption(checked("WithCompanyGUID", guid == "" || isUUID(guid), "not a UUID", func(c *config) { c.company = guid }))
}

// WithInsecureHTTP allows an http:// base URL to a host that is not
// loopback, refused without it so that a key never crosses a network in
// clear text by accident.
func WithInsecureHTTP() ClientOption {
	return clientOption(func(c *config) { c.insecure = true })
}

// WithHeader adds a header: given to a client, to every request (token
// requests and HTTPClient's to the base URL's origin included); given to a
// call, to its attempts, over the client's. A header the client sets itself
// (Authorization, Idempotency-Key, Content-Type, Content-Length, Host), a
// hop-by-hop header and a value with a control character are invalid.
func WithHeader(key, value string) Option {
	k := http.CanonicalHeaderKey(key)
	bad := badHeader(k, value)
	return option(checked("WithHeader", bad == "", bad, func(c *config) {
		h := make(http.Header, len(c.header)+1)
		maps.Copy(h, c.header)
		h[k] = []string{value}
		c.header = h
	}))
}

// badHeader says why a header cannot be added, or "" when it can.
func badHeader(key, value string) string {
	switch key {
	case "Authorization", "Idempotency-Key", "Content-Type", "Content-Length", "Host",
		"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return fmt.Sprintf("%q is set by the client or the transport", key)
	}
	if key == "" || len(key) > 256 {
		return "want a header name"
	}
	notToken := func(r rune) bool { return r <= ' ' || r >= 0x7f || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) }
	if strings.ContainsFunc(key, notToken) {
		return fmt.Sprintf("%q is not a header name", key)
	}
	control := func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }
	if strings.ContainsFunc(value, control) {
		return "the value has a control character"
	}
	return ""
}

// WithIdempotencyKey sets the Idempotency-Key of a call, instead of the one
// generated for it: a caller that restarts resends a call with the same key,
// and the server stores it once. 1 to 255 visible ASCII characters.
func WithIdempotencyKey(key string) CallOption {
	ok := len(key) <= 255 && validToken(key)
	return callOption(checked("WithIdempotencyKey", ok, "want 1 to 255 visible ASCII characters", func(c *config) { c.idemKey = key }))
}

// WithResponseInfo asks for the details of a call's last answer: dst is
// filled when the call returns, error or not. Nil asks for nothing.
func WithResponseInfo(dst *ResponseInfo) CallOption {
	return callOption(func(c *config) { c.info = dst })
}

// ResponseInfo describes how a call went; WithResponseInfo asks for it.
// Printed or JSON-encoded, it shows the answer's header names, not their
// values, which a hostile server could fill with a secret of the client's.
type ResponseInfo struct {
	StatusCode int           // of the last answer; 0 when none came
	Header     http.Header   // of the last answer; nil when none came
	RequestID  string        // the last answer's X-Request-Id, when sent
	Attempts   int           // HTTP attempts of the call itself: retries and the 401 replay included, token requests not
	Duration   time.Duration // from the call's start to its return
}

func (i ResponseInfo) printable() []slog.Attr {
	names := make([]string, 0, len(i.Header))
	for k := range i.Header {
		names = append(names, k)
	}
	slices.Sort(names)
	return []slog.Attr{
		slog.Int("status_code", i.StatusCode),
		slog.String("header", "["+strings.Join(names, " ")+"]"),
		slog.String("request_id", i.RequestID),
		slog.Int("attempts", i.Attempts),
		slog.Duration("duration", i.Duration),
	}
}

// Format implements fmt.Formatter: every verb prints the description,
// with the header names only.
func (i ResponseInfo) Format(f fmt.State, verb rune) {
	format(f, verb, "apala.ResponseInfo", i.printable())
}

// MarshalJSON encodes the description, with the header names only.
func (i ResponseInfo) MarshalJSON() ([]byte, error) { return marshalAttrs(i.printable()) }

// WithHooks sets functions the client calls as it works, to feed metrics or
// traces without the package depending on them.
func WithHooks(h Hooks) ClientOption {
	return clientOption(func(c *config) { c.hooks = h })
}

// Hooks are called synchronously, outside every lock of the client, so a
// hook may call any method of the client but Close. An API call's Attempt
// reports come on the caller's goroutine before the call returns; a token
// request's reports (Attempt and Token) come in order once its result
// reached its waiters: nobody waits for a hook. A nil func is skipped. A
// hook gets the caller's context; for a token request, that of the caller
// that started it, its values kept (a trace, a logger), its cancellation
// removed. Hooks see no secret but through Token, which prints redacted.
type Hooks struct {
	// Attempt is called after every HTTP attempt, token requests included.
	Attempt func(ctx context.Context, a AttemptInfo)
	// Token is called once per token request (API-key exchange or
	// refresh), after its retries.
	Token func(ctx context.Context, t TokenInfo)
}

// AttemptInfo describes one HTTP attempt, for Hooks.Attempt.
type AttemptInfo struct {
	Method, Path string        // Path without the query
	Attempt      int           // 1 for the first
	StatusCode   int           // 0 when no answer came
	RequestID    string        // the answer's X-Request-Id, when sent
	Duration     time.Duration // from sending to the end of the answer
	Err          error         // nil for a 2xx answer
	RetryIn      time.Duration // the wait before the next attempt; 0 when none follows
}

// TokenInfo describes one token request, for Hooks.Token.
type TokenInfo struct {
	Refresh  bool          // true: POST /api/auth/refresh; false: the API-key exchange
	Token    Token         // the new token on success (prints redacted); zero on failure
	Duration time.Duration // from its start to its end, retries included
	Err      error
}

// WithTokenStore makes the client share its tokens through s: before every
// automatic token request it adopts a fresh token saved in s for the same
// base URL and key, and after every token request it saves what it got.
// When s is also a TokenLocker, a token request holds its lock from a second
// load to the save, so that processes racing for a token make one request;
// adopting takes no lock. Each use of s is bounded by 15 seconds, even when
// s ignores its context; failures of s are logged at Warn and never fail a
// call. Nil means no store.
func WithTokenStore(s TokenStore) ClientOption {
	return clientOption(func(c *config) { c.store = s })
}

// WithAPIKeyFunc makes the client ask fn for the API key at every API-key
// exchange (the first use, a refused refresh, Authenticate), so that a key
// rotated in a secret store is picked up without a restart; the key given
// to NewClient may then be "". When the token endpoint answers 401 and fn
// then returns another key, the exchange is tried once more with it. An
// error from fn fails that token request at once, wrapped as "apala: API
// key: ..." (the cooldown applies). Every key fn returns is scrubbed from
// server text and never logged. Nil means the key given to NewClient.
func WithAPIKeyFunc(fn func(ctx context.Context) (string, error)) ClientOption {
	return clientOption(func(c *config) { c.keyFunc = fn })
}

// Client talks to the Apala API. It exchanges the API key for a token pair on
// first use, keeps the access token fresh by itself, and attaches it to every
// call; its users never handle tokens. A Client is safe for concurrent use
// by any number of goroutines: create one and share it. Close it when done
// to stop its background work and release its idle connections.
type Client struct {
	cfg      config // the options, checked; fixed after NewClient
	apiKey   string
	baseStr  string // base URL without a trailing slash
	origin   string // scheme://host:port of the base URL
	hc       *http.Client
	ownRT    *http.Transport // the transport the client made, closed by Close; nil with WithHTTPClient
	budget   retryBudget
	keyForms []string // secretForms of apiKey

	// The clock by which token lifetimes are judged (since, now), and the
	// real one, for waits; they differ only for a FakeServer's clients.
	since    func(time.Time) time.Duration
	now      func() time.Time
	baseTime time.Time // the zero of the monotonic clock
	waited   func(time.Time) time.Duration

	tokenState // the token lifecycle (auth.go)
}

// NewClient returns a client that authenticates with apiKey. It sends
// nothing: the first call that needs a token authenticates. An empty key
// (without WithAPIKeyFunc) is ErrMissingAPIKey, and an invalid option or
// base URL an error matching ErrConfig.
func NewClient(apiKey string, opts ...ClientOption) (*Client, error) {
	cfg := config{
		baseURL:    DefaultBaseURL,
		margin:     DefaultRefreshMargin,
		maxRetries: defaultMaxRetries,
		minBackoff: defaultMinBackoff,
		maxBackoff: defaultMaxBackoff,
		timeout:    defaultTimeout,
	}
	for _, o := range opts {
		if o != nil {
			o.client(&cfg)
		}
	}
	if cfg.err != nil {
		return nil, cfg.err
	}
	if apiKey == "" && cfg.keyFunc == nil {
		return nil, ErrMissingAPIKey
	}
	base, err := parseBaseURL(cfg.baseURL, cfg.insecure)
	if err != nil {
		return nil, fmt.Errorf("%w: base URL: %s", ErrConfig, err)
	}
	c := &Client{
		cfg:      cfg,
		apiKey:   apiKey,
		baseStr:  strings.TrimSuffix(base.String(), "/"),
		origin:   origin(base),
		since:    timeSince,
		now:      timeNow,
		baseTime: timeNow(),
		keyForms: secretForms(apiKey),
		waited:   timeSince,
	}
	c.closing = make(chan struct{})
	if cfg.hc != nil {
		hc := *cfg.hc
		c.hc = &hc
	} else if t, ok := http.DefaultTransport.(*http.Transport); ok {
		c.ownRT = t.Clone()
		c.ownRT.MaxIdleConnsPerHost = 64
		c.hc = &http.Client{Transport: c.ownRT}
	} else {
		c.hc = &http.Client{Transport: http.DefaultTransport}
	}
	c.hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c, nil
}

// NewClientFromEnv is NewClient with the API key from APALA_API_KEY, and the
// base URL and company GUID from APALA_BASE_URL and APALA_COMPANY_GUID when
// they are set. Options win over the environment; with WithAPIKeyFunc,
// APALA_API_KEY is not required.
func NewClientFromEnv(opts ...ClientOption) (*Client, error) {
	key := os.Getenv(EnvAPIKey)
	var given config
	for _, o := range opts {
		if o != nil {
			o.client(&given)
		}
	}
	if key == "" && given.keyFunc == nil {
		return nil, fmt.Errorf("%w: %s is not set", ErrMissingAPIKey, EnvAPIKey)
	}
	var env []ClientOption
	if u := os.Getenv(EnvBaseURL); u != "" {
		env = append(env, WithBaseURL(u))
	}
	if g := os.Getenv(EnvCompanyGUID); g != "" {
		env = append(env, WithCompanyGUID(g))
	}
	return NewClient(key, append(env, opts...)...)
}

// parseBaseURL accepts an absolute http(s) URL without user info, query or
// fragment; http only to a loopback host unless insecure. Its errors never
// quote the URL, which may hold a password.
func parseBaseURL(raw string, insecure bool) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		if ue, ok := err.(*url.Error); ok {
			err = ue.Err
		}
		return nil, err
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https" || u.Opaque != "":
		return nil, errors.New("want an absolute http or https URL")
	case u.Host == "" || u.Hostname() == "":
		return nil, errors.New("no host")
	case u.User != nil:
		return nil, errors.New("user info is not allowed")
	case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return nil, errors.New("query and fragment are not allowed")
	case u.Scheme == "http" && !insecure && !isLoopback(u.Hostname()):
		return nil, errors.New("http:// to a host that is not loopback; use https, or WithInsecureHTTP")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

func isLoopback(host string) bool {
	return strings.EqualFold(host, "localhost") || net.ParseIP(host).IsLoopback() // a nil IP is not loopback
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
func (c *Client) CompanyGUID() string { return c.cfg.company }

// Format implements fmt.Formatter: every verb prints the client's base URL,
// never its secrets. (encoding/json sees no field of a Client.)
func (c *Client) Format(f fmt.State, verb rune) { // a nil *Client: fmt prints <nil>
	format(f, verb, "apala.Client", []slog.Attr{slog.String("base_url", c.baseStr), slog.String("api_key", "[REDACTED]")})
}

// Close ends every wait of the client's calls, and every later call, with
// ErrClosed, cancels and waits for a token request in progress (and its
// hooks), and closes the idle connections of the transport the client made.
// It is idempotent and always returns nil.
func (c *Client) Close() error {
	c.mu.Lock()
	if !c.closed.Swap(true) {
		close(c.closing)
	}
	c.pair.Store(closedPair) // never usable: every token read falls to await
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
	path    string    // as sent, with Do's query
	name    string    // path without the query, for errors, logs and hooks
	body    []byte    // marshalled once, replayed from bytes
	auth    bool      // attach the access token, replay once on 401
	idemKey string    // Idempotency-Key, the same for every attempt
	secrets []string  // the secrets its body carries (a key, a refresh token)
	sent    [2]string // the access tokens of its first attempt and its latest
	cfg     *config   // the call's settings, from callConfig; a token request's are the client's
	flight  *flight   // the token request it belongs to; nil for an API call
}

func newRequest(method, path string, auth bool) request {
	name, _, _ := strings.Cut(path, "?")
	return request{method: method, path: path, name: name, auth: auth}
}

// errorf returns an error about rq, prefixed "apala: METHOD PATH: "; with
// kind non-nil the prefix is kind's text, and the error matches kind.
func (rq *request) errorf(kind error, format string, args ...any) error {
	if kind == nil {
		return fmt.Errorf("apala: %s %s: "+format, append([]any{rq.method, rq.name}, args...)...)
	}
	return fmt.Errorf("%w: %s %s: "+format, append([]any{kind, rq.method, rq.name}, args...)...)
}

// carried lists the secrets rq carried, scrubbed from its answers even
// once the client holds others.
func (rq *request) carried() []string {
	return append(rq.secrets[:len(rq.secrets):len(rq.secrets)], rq.sent[0], rq.sent[1])
}

// missing is the error for an answer without a required field.
func (rq *request) missing(field string) error {
	return rq.errorf(nil, "response is missing %s", field)
}

var (
	hdrJSON      = []string{"application/json"}
	hdrUserAgent = []string{userAgent}
)

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// Do sends one call to the Apala API: method ("" is GET) and path (absolute,
// under the base URL), in marshalled as the JSON body (nil: none) and the
// JSON answer decoded into out (nil: discarded; a 204 leaves it untouched).
// It attaches the access token, retries transient failures, and replays the
// call once with a new token when the server answers 401. A POST carries an
// Idempotency-Key that stays the same across its retries and replay.
//
// A path with a dot segment ("..", escaped or not) is a *ValidationError,
// and nothing is sent. Errors are those of every call; they, logs and hooks
// name the path without its query.
func (c *Client) Do(ctx context.Context, method, path string, in, out any, opts ...CallOption) error {
	if method == "" {
		method = http.MethodGet
	}
	cfg, err := c.callConfig(opts)
	if err != nil {
		return err
	}
	if !validPath(path) {
		return &ValidationError{Field: "path", Reason: "want an absolute path under the base URL, such as /api/feedback, without dot segments"}
	}
	rq := newRequest(method, path, true)
	return c.call(ctx, &rq, in, out, cfg)
}

// call sends rq with in as its JSON body and, when it is a POST to an API
// endpoint, an Idempotency-Key, and decodes the answer into out.
func (c *Client) call(ctx context.Context, rq *request, in, out any, cfg *config) error {
	rq.cfg = cfg
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return rq.errorf(nil, "encoding request: %w", err)
		}
		rq.body = b
	}
	if rq.idemKey = cfg.idemKey; rq.idemKey == "" && rq.method == http.MethodPost && !strings.HasPrefix(rq.name, "/api/auth/") {
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
// name another host nor climb out of the base URL's prefix: no dot segment,
// escaped or not, also when a proxy decodes it up to three times, a
// segment ending at a ";", "?" or "#" (decoded or not).
func validPath(p string) bool {
	if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || len(p) > 8<<10 || strings.ContainsAny(p, "#\\ ") {
		return false
	}
	path, _, _ := strings.Cut(p, "?")
	refused := func(r rune) bool { return r < ' ' || r == 0x7f || r == '\\' }
	for depth := 0; ; depth++ {
		if strings.ContainsFunc(path, refused) {
			return false
		}
		for rest := path; rest != ""; {
			var seg string
			seg, rest, _ = strings.Cut(rest, "/")
			if i := strings.IndexAny(seg, ";?#"); i >= 0 {
				seg = seg[:i]
			}
			if seg == "." || seg == ".." {
				return false
			}
		}
		if depth == 3 || !strings.Contains(path, "%") {
			return true
		}
		dec, err := url.PathUnescape(path)
		if err != nil || !utf8.ValidString(dec) {
			return false
		}
		path = dec
	}
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

// The retry budget, with the figures of the AWS SDK's retry quota: a retry
// of an API call spends retryCost, a successful API call gives back
// retryRefund, up to retryBudgetSize; a failure the budget cannot pay a
// retry for is returned at once. An outage costs a client at most 100
// retries, and after it every 5 successes pay for one retry again.
const (
	retryBudgetSize = 500
	retryCost       = 5
	retryRefund     = 1
)

// retryBudget is a client's retry budget, lock-free; the zero value is full.
type retryBudget struct{ spent atomic.Int64 }

// spend takes the cost of a retry, and reports whether there was enough.
func (b *retryBudget) spend() bool {
	for {
		s := b.spent.Load()
		if s+retryCost >= retryBudgetSize { // 99 retries: with a token request, 1,000 failed calls make 1,100 attempts
			return false
		}
		if b.spent.CompareAndSwap(s, s+retryCost) {
			return true
		}
	}
}

// refill gives back the refund of a success; one atomic load when full.
func (b *retryBudget) refill() {
	for {
		s := b.spent.Load()
		if s == 0 || b.spent.CompareAndSwap(s, max(s-retryRefund, 0)) {
			return
		}
	}
}

// send runs rq to completion: token, attempts, retries, the one 401 replay,
// and decoding into out. It returns when, by the token clock, the
// successful attempt was sent.
func (c *Client) send(ctx context.Context, rq *request, out any) (time.Time, error) {
	if ctx == nil {
		return time.Time{}, errNilContext
	}
	cfg := rq.cfg
	if info := cfg.info; info != nil { // emptied by callConfig
		start := time.Now()
		defer func() { info.Duration = time.Since(start) }()
	}
	b := bearer{c: c}
	retries := 0
	for n := 1; ; n++ {
		// A done context sends nothing, not even a token request.
		if err := ctx.Err(); err != nil {
			return time.Time{}, rq.errorf(nil, "%w", err)
		}
		var pair *tokenPair
		if rq.auth {
			p, err := b.token(ctx)
			if err != nil {
				return time.Time{}, err
			}
			pair = p
			rq.sent[min(n, 2)-1] = p.access // the first attempt's and the latest
		} else if c.closed.Load() {
			return time.Time{}, ErrClosed
		}
		sent := c.now()
		resp, err := c.attempt(ctx, rq, cfg, pair)
		if err == nil && resp.ok() {
			if rq.flight == nil {
				c.budget.refill()
			} else { // a token answer's tokens are secrets before the client holds them
				var a tokenAnswer
				_ = json.Unmarshal(resp.body.Bytes(), &a) // a malformed answer is decode's to report
				rq.secrets = append(rq.secrets, a.AccessToken, a.RefreshToken)
			}
			c.report(ctx, rq, cfg, n, resp, nil, 0)
			err = c.decode(rq, resp, out)
			resp.release()
			return sent, err
		}
		if err == nil {
			err = c.apiError(rq, resp)
		}
		resp.release()
		// Next: nothing, the 401 replay, or a retry after wait.
		again, wait, why := false, time.Duration(0), ""
		switch {
		case ctx.Err() != nil:
		case rq.auth && b.refused(resp.status, true):
			again = true
		case retryable(resp.status, err) && retries < cfg.maxRetries:
			wait = cfg.backoff(retries + 1)
			var ae *APIError
			if errors.As(err, &ae) && ae.RetryAfter > 0 {
				wait = ae.RetryAfter
			}
			switch dl, ok := ctx.Deadline(); {
			case ok && time.Until(dl) < wait:
				wait, why = 0, "it would outlast the caller's deadline"
			case rq.flight == nil && !c.budget.spend():
				wait, why = 0, "the retry budget is spent"
				err = fmt.Errorf("%w (not retried: the retry budget is spent)", err)
			default:
				again = true
				retries++
			}
		}
		c.report(ctx, rq, cfg, n, resp, err, wait)
		if ctx.Err() != nil {
			return time.Time{}, rq.errorf(nil, "%w", ctx.Err())
		}
		if why != "" {
			c.logAttrs(ctx, slog.LevelWarn, "apala: not retrying",
				slog.String("method", rq.method), slog.String("path", rq.name),
				slog.String("reason", retryReason(resp.status)), slog.String("why", why))
		}
		if !again {
			return time.Time{}, err
		}
		if wait > 0 {
			c.logAttrs(ctx, slog.LevelWarn, "apala: retrying",
				slog.String("method", rq.method), slog.String("path", rq.name),
				slog.String("reason", retryReason(resp.status)), slog.Duration("delay", wait),
				slog.Int("attempt", n+1))
			if err := sleep(ctx, wait, c.closing); err != nil {
				return time.Time{}, rq.errorf(nil, "%w", err)
			}
		}
	}
}

// report tells about attempt n, when anyone asked: the Debug log, the
// Attempt hook (for a token request, once it ended: see fly) and the call's
// ResponseInfo. wait is the pause before the next attempt, 0 for none.
func (c *Client) report(ctx context.Context, rq *request, cfg *config, n int, r response, err error, wait time.Duration) {
	hook := c.cfg.hooks.Attempt
	debug := c.cfg.logger != nil && c.cfg.logger.Enabled(ctx, slog.LevelDebug)
	if cfg.info == nil && hook == nil && !debug {
		return
	}
	rid := c.requestID(r.header, rq)
	if info := cfg.info; info != nil {
		info.Attempts = n
		if r.status != 0 {
			info.StatusCode, info.Header, info.RequestID = r.status, r.header, rid
		}
	}
	if debug {
		attrs := []slog.Attr{slog.String("method", rq.method), slog.String("path", rq.name),
			slog.Int("status", r.status), slog.Duration("duration", r.took), slog.Int("attempt", n)}
		if rid != "" {
			attrs = append(attrs, slog.String("request_id", rid))
		}
		c.cfg.logger.LogAttrs(ctx, slog.LevelDebug, "apala: http attempt", attrs...)
	}
	if hook != nil {
		a := AttemptInfo{Method: rq.method, Path: rq.name, Attempt: n, StatusCode: r.status,
			RequestID: rid, Duration: r.took, Err: err, RetryIn: wait}
		if rq.flight != nil {
			rq.flight.reports = append(rq.flight.reports, func() { hook(ctx, a) })
		} else {
			hook(ctx, a)
		}
	}
}

// requestID reads an answer's X-Request-Id, scrubbed and bounded: server text.
func (c *Client) requestID(h http.Header, rq *request) string {
	v := h.Get("X-Request-Id")
	if v == "" {
		return ""
	}
	return c.serverText(v, 128, rq.carried())
}

// bearer attaches the access token to the attempts of one request, for send
// and HTTPClient's transport, and holds the one rule for a 401: the first
// time, the token is dropped (unless replaced meanwhile) and the request may
// go once more with a new one; never a second time.
type bearer struct {
	c        *Client
	pair     *tokenPair // the token of the last attempt
	replayed bool
}

// token returns a usable token for the next attempt, waiting when need be.
func (b *bearer) token(ctx context.Context) (*tokenPair, error) {
	var err error
	b.pair, err = b.c.usablePair(ctx)
	return b.pair, err
}

// refused applies the 401 rule to an answer with status, and reports
// whether to send the request, if replayable, once more.
func (b *bearer) refused(status int, replayable bool) bool {
	if status != http.StatusUnauthorized || b.replayed {
		return false
	}
	b.replayed = true
	b.c.reject(b.pair)
	return replayable
}

// response is one answer of the server, read; release its pooled body.
type response struct {
	status int // 0 when no answer came
	header http.Header
	body   *bytes.Buffer
	took   time.Duration // from sending to the end of the reading
}

func (r *response) ok() bool { return r.status >= 200 && r.status < 300 }

func (r *response) release() {
	if b := r.body; b != nil && b.Cap() <= 1<<20 {
		bufPool.Put(b)
	}
	r.body = nil
}

// attempt sends one HTTP request and reads its answer: a success body up to
// maxBody, an error body up to maxErrorBody, drained past that. The response
// comes back with an error too, for the time it took.
func (c *Client) attempt(ctx context.Context, rq *request, cfg *config, pair *tokenPair) (r response, err error) {
	if cfg.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.timeout)
		defer cancel()
	}
	var body io.Reader
	if rq.body != nil {
		body = bytes.NewReader(rq.body)
	}
	req, err := http.NewRequestWithContext(ctx, rq.method, c.baseStr+rq.path, body)
	if err != nil {
		return r, rq.errorf(nil, "%w", c.scrubErr(err, rq.carried()))
	}
	h := req.Header
	h["Accept"] = hdrJSON
	h["User-Agent"] = hdrUserAgent
	maps.Copy(h, cfg.header)
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
	defer func() { r.took = time.Since(start) }()
	resp, err := c.hc.Do(req)
	if ue, ok := err.(*url.Error); ok {
		ue.URL = c.baseStr + rq.name // net/http quotes the query, which errors never carry
	}
	if err != nil {
		return r, rq.errorf(ErrConnection, "%w", c.scrubErr(err, rq.carried()))
	}
	defer resp.Body.Close()
	r.status, r.header = resp.StatusCode, resp.Header
	limit := int64(maxErrorBody)
	if r.ok() {
		limit = maxBody
		if resp.ContentLength > maxBody {
			return r, rq.errorf(nil, "response body of %d bytes exceeds the %d-byte limit", resp.ContentLength, maxBody)
		}
	}
	r.body = bufPool.Get().(*bytes.Buffer)
	r.body.Reset()
	if _, err = r.body.ReadFrom(io.LimitReader(resp.Body, limit+1)); err != nil {
		r.release()
		r.status, r.header = 0, nil // a broken answer is no answer
		// As net/http does for the request, so that every connection
		// failure unwraps to a *url.Error.
		op := rq.method[:1] + strings.ToLower(rq.method[1:])
		err = &url.Error{Op: op, URL: c.baseStr + rq.name, Err: err}
		return r, rq.errorf(ErrConnection, "reading response: %w", c.scrubErr(err, rq.carried()))
	}
	if int64(r.body.Len()) > limit {
		if r.ok() {
			r.release()
			return r, rq.errorf(nil, "response body exceeds the %d-byte limit", maxBody)
		}
		r.body.Truncate(int(limit))
		_, _ = io.CopyN(io.Discard, resp.Body, maxDrain)
	}
	return r, nil
}

// decode reads a success body into out. An empty or malformed body is an
// error when out wants one; the error names the content type, never the
// body. A 204 leaves out untouched.
func (c *Client) decode(rq *request, r response, out any) error {
	if out == nil || r.status == http.StatusNoContent {
		return nil
	}
	data := bytes.TrimSpace(r.body.Bytes())
	if len(data) == 0 {
		return rq.errorf(nil, "%d response has an empty body", r.status)
	}
	if err := json.Unmarshal(data, out); err != nil {
		// Not wrapped: encoding/json quotes what the server sent.
		return rq.errorf(nil, "malformed JSON response (%s): %s", c.mediaType(r.header, rq), c.serverText(err.Error(), maxMessage, rq.carried()))
	}
	return nil
}

// apiError builds the *APIError for a non-2xx answer. The message comes only
// from a JSON body, scrubbed of every secret of the client and of rq.
func (c *Client) apiError(rq *request, r response) *APIError {
	e := &APIError{StatusCode: r.status, Method: rq.method, Path: rq.name,
		RetryAfter: parseRetryAfter(r.header.Get("Retry-After"), c.now()), RequestID: c.requestID(r.header, rq)}
	if r.body == nil || r.body.Len() == 0 {
		return e
	}
	if v := errorValue(r.body.Bytes()); v != nil {
		e.Message = c.serverText(v, maxMessage, rq.carried())
	}
	if e.Message == "" {
		e.contentType = c.mediaType(r.header, rq)
	}
	return e
}

// scrubErr returns err without the secrets its text may quote (net/http
// quotes a malformed answer; a key function may quote its key): when it
// quotes one, as a *scrubbedError, inside a *url.Error when err was one.
func (c *Client) scrubErr(err error, extra []string) error {
	s, scrub := err.Error(), c.scrubber(extra)
	clean := scrub(s)
	if clean == s {
		return err
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return &url.Error{Op: ue.Op, URL: ue.URL, Err: &scrubbedError{msg: scrub(ue.Err.Error()), err: ue.Err}}
	}
	return &scrubbedError{msg: clean, err: err}
}

// scrubbedError is an error whose text quoted a secret, scrubbed, its
// identity kept for errors.Is and errors.As. Unwrap would hand out the text.
type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string        { return e.msg }
func (e *scrubbedError) Is(target error) bool { return errors.Is(e.err, target) }
func (e *scrubbedError) As(target any) bool   { return errors.As(e.err, target) }

// mediaType names the media type of an answer for an error, scrubbed.
func (c *Client) mediaType(hdr http.Header, rq *request) string {
	ct := hdr.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	switch {
	case ct == "":
		mt = "no content type"
	case err != nil:
		mt = "invalid content type"
	}
	return c.serverText(mt, 100, rq.carried())
}

// errorValue finds the server's error value in a JSON body: "error",
// "message", "detail", or Phoenix's {"errors": {"detail": ...}}. It is
// decoded, so that no JSON escape can hide a secret from the scrubbing.
func errorValue(body []byte) any {
	var v struct{ Error, Message, Detail, Errors any } // encoding/json matches "error" to Error
	if json.Unmarshal(body, &v) != nil {
		return nil
	}
	if m, ok := v.Errors.(map[string]any); ok && present(m["detail"]) {
		v.Errors = m["detail"]
	}
	for _, x := range []any{v.Error, v.Message, v.Detail, v.Errors} {
		if present(x) {
			return x
		}
	}
	return nil
}

// present reports whether a decoded JSON value carries any text.
func present(v any) bool {
	s, ok := v.(string)
	return v != nil && (!ok || strings.TrimSpace(s) != "")
}

// serverText renders a decoded JSON value the server sent (a nested one as
// JSON) as one line of at most max bytes: secrets scrubbed first, control
// characters blanked, and the cut made last, on a character boundary.
func (c *Client) serverText(v any, max int, extra []string) string {
	s, ok := v.(string)
	if !ok {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if enc.Encode(v) != nil {
			return ""
		}
		s = b.String()
	}
	// What lies past max+scrubRun never shows nor decides what is a secret.
	if len(s) > max+scrubRun {
		s = s[:max+scrubRun]
	}
	s = strings.TrimSpace(strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, c.scrubber(extra)(s)))
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// scrubber returns what removes from server text every secret the client
// holds (the API key, the keys WithAPIKeyFunc returned, the pair held), those
// in extra and the forms known, each in secretForms, not only whole: any run
// of scrubRun bytes of one is redacted, so a cut or split secret leaks nothing.
func (c *Client) scrubber(extra []string, known ...string) func(string) string {
	p := c.pair.Load()
	if p == nil {
		p = &tokenPair{}
	}
	if ks := c.keys.Load(); ks != nil {
		extra = append(extra[:len(extra):len(extra)], *ks...)
	}
	// The forms of the key and of the pair held were built when they came.
	forms := append(append(append([]string(nil), c.keyForms...), p.forms...), known...)
	for _, secret := range extra {
		if secret != c.apiKey && secret != p.access && secret != p.refresh {
			forms = append(forms, secretForms(secret)...)
		}
	}
	return func(s string) string {
		// Mark every byte in a run of a secret (a whole one when shorter),
		// then replace marked stretches.
		var marked []bool
		low := lowerASCII(s)
		for i := range low {
			for _, f := range forms {
				if n := min(len(f), scrubRun); i+n <= len(low) && strings.Contains(f, low[i:i+n]) {
					if marked == nil {
						marked = make([]bool, len(s))
					}
					for j := i; j < i+n; j++ {
						marked[j] = true
					}
					break
				}
			}
		}
		if marked == nil {
			return s
		}
		var b strings.Builder
		for i := 0; i < len(s); i++ {
			switch {
			case !marked[i]:
				b.WriteByte(s[i])
			case i == 0 || !marked[i-1]: // a marked stretch starts
				b.WriteString("[REDACTED]")
			}
		}
		return b.String()
	}
}

// lowerASCII lowers the ASCII letters of s byte for byte, so that offsets
// into it are offsets into s.
func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c-'A' < 26 {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// secretForms returns secret as the server's text may carry it: raw,
// JSON-escaped with and without HTML escaping, and URL-escaped.
func secretForms(secrets ...string) (forms []string) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for _, secret := range slices.DeleteFunc(secrets, func(s string) bool { return len(s) < 4 }) {
		forms = append(forms, secret, url.QueryEscape(secret), url.PathEscape(secret))
		for _, html := range []bool{true, false} {
			b.Reset()
			enc.SetEscapeHTML(html)
			if enc.Encode(secret) == nil {
				quoted := strings.TrimSuffix(b.String(), "\n")
				forms = append(forms, quoted[1:len(quoted)-1])
			}
		}
	}
	for i, f := range forms {
		forms[i] = lowerASCII(f) // compared without case
	}
	return forms
}

// parseRetryAfter reads Retry-After as seconds or an HTTP date, capped at
// maxRetryAfter; 0 when absent or unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		d = time.Duration(min(max(n, 0), int64(maxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
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
// fix: a certificate that failed verification, a TLS handshake that failed
// (an alert, a version mismatch, a record that is not TLS), an https URL
// answered in plain HTTP, an unsupported scheme.
func permanent(err error) bool {
	var verify *tls.CertificateVerificationError
	var record tls.RecordHeaderError
	if errors.As(err, &verify) || errors.As(err, &record) {
		return true
	}
	msg := err.Error()
	for _, s := range [...]string{"tls: ", "server gave HTTP response to HTTPS client", "unsupported protocol scheme"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

func retryReason(status int) string {
	if status == 0 {
		return "connection error"
	}
	return strconv.Itoa(status) + " " + http.StatusText(status)
}

// backoff is the wait before retry n (1-based): min·2^(n-1), plus up to half
// of that again as jitter, within [min, max]; each sum d+x is taken as
// min(d, max-x)+x, which saturates at max instead of overflowing.
func (cfg *config) backoff(n int) time.Duration {
	d, hi := cfg.minBackoff, cfg.maxBackoff
	for i := 1; i < n && d < hi; i++ {
		d = min(d, hi-d) + d
	}
	if half := int64(d / 2); half > 0 {
		j := time.Duration(mrand.Int63n(half))
		d = min(d, hi-j) + j
	}
	return d
}

// sleep waits for d, until ctx ends, or until closing is closed (nil:
// never), as Close closes a client's.
func sleep(ctx context.Context, d time.Duration, closing <-chan struct{}) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-closing:
		return ErrClosed
	}
}

// logAttrs logs when a logger is set and enabled at level; report, on the
// hot path, checks before building its attributes.
func (c *Client) logAttrs(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {
	if c.cfg.logger != nil && c.cfg.logger.Enabled(ctx, level) {
		c.cfg.logger.LogAttrs(ctx, level, msg, attrs...)
	}
}

// HTTPClient returns an *http.Client, for calls this package does not wrap,
// that attaches the access token, and the client's WithHeader headers a
// request does not set itself, to requests for the base URL's origin only.
// On a 401 the token is dropped and a request whose body can be replayed
// (GetBody set) is sent once more with a new one; otherwise the 401 is
// returned. After Close, every request fails with ErrClosed.
func (c *Client) HTTPClient() *http.Client {
	base := c.hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	return &http.Client{
		Transport:     &bearerTransport{c: c, base: base},
		CheckRedirect: c.hc.CheckRedirect,
		Jar:           c.hc.Jar,
		Timeout:       c.hc.Timeout,
	}
}

// bearerTransport adds the access token to requests for the client's origin.
type bearerTransport struct {
	c    *Client
	base http.RoundTripper // the client's transport
}

var _ http.RoundTripper = (*bearerTransport)(nil)

// RoundTrip implements http.RoundTripper. It never modifies req.
func (t *bearerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.c.closed.Load() {
		closeBody(req.Body)
		return nil, ErrClosed
	}
	if req.URL == nil || origin(req.URL) != t.c.origin {
		return t.base.RoundTrip(req)
	}
	b := bearer{c: t.c}
	body := req.Body
	for {
		p, err := b.token(req.Context())
		if err != nil {
			closeBody(body)
			return nil, err
		}
		r := req.Clone(req.Context())
		r.Body = body
		r.Header["Authorization"] = p.bearer
		for k, v := range t.c.cfg.header {
			if _, set := req.Header[k]; !set {
				r.Header[k] = v
			}
		}
		resp, err := t.base.RoundTrip(r)
		if err != nil {
			return resp, err
		}
		hasBody := req.Body != nil && req.Body != http.NoBody
		if !b.refused(resp.StatusCode, !hasBody || req.GetBody != nil) {
			return resp, nil
		}
		if body = nil; hasBody {
			if body, err = req.GetBody(); err != nil {
				return resp, nil
			}
		}
		_, _ = io.CopyN(io.Discard, resp.Body, maxErrorBody)
		resp.Body.Close()
	}
}

func closeBody(b io.ReadCloser) {
	if b != nil {
		b.Close()
	}
}

// Channel is the channel a message travels on.
type Channel string

// The channels: a text message, an email, any other.
const (
	ChannelSMS   Channel = "SMS"
	ChannelEmail Channel = "EMAIL"
	ChannelOther Channel = "OTHER"
)

// Score is the quality of a message as judged in feedback.
type Score string

// The scores: the message worked, did not, or made no difference.
const (
	ScoreGood    Score = "good"
	ScoreBad     Score = "bad"
	ScoreNeutral Score = "neutral"
)

// PositiveReward is an outcome a message led to, reported in feedback.
type PositiveReward string

// The positive rewards: the customer updated their account number, sent
// bank statements as PDF, linked Chirp, signed the loan agreement.
const (
	RewardUpdatingAccountNumber    PositiveReward = "updating_account_number"
	RewardSendingPDFBankStatements PositiveReward = "sending_pdf_bank_statements"
	RewardLinkingChirp             PositiveReward = "linking_chirp"
	RewardSigningLoanAgreement     PositiveReward = "signing_loan_agreement"
)

// CreditScoreBin is the customer's credit score range.
type CreditScoreBin string

// The credit score ranges: from the first bound up to the second; Plus is
// the bound or more.
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

// The loan amount ranges, as the credit score ranges.
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

// The age ranges, as the credit score ranges.
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

// The monthly income ranges, as the credit score ranges.
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

// ApplicationReason is why the customer applied for the loan. Only 1.x
// servers of the API (those of its 1.x SDKs) read it; leave it empty for
// newer ones, and it is left out of the request.
type ApplicationReason string

// The application reasons.
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
	IsRepeatBorrower       *bool // sent as 0 or 1
	StateID                *int  // 1 or more
	CreditScoreBin         CreditScoreBin
	RequestedLoanAmountBin LoanAmountBin
	AgeBin                 AgeBin
	MonthlyIncomeBin       MonthlyIncomeBin
	ApplicationReason      ApplicationReason // 1.x servers only: see ApplicationReason
}

// MessageRequest is the input of ProcessMessage and OptimizeMessage: a
// conversation so far and a candidate message to send next.
type MessageRequest struct {
	Messages    []Message         // the conversation so far, oldest first; may be empty
	Candidate   Message           // the message to analyse
	CustomerID  string            // the customer's UUID
	CompanyGUID string            // the company's UUID (the token answer's company_id); the client's CompanyGUID() when empty
	ZipCode     string            // optional; 5 digits when given (OptimizeMessage: 1.x servers only)
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
	ID                string           `json:"id"`
	MessageID         string           `json:"message_id"`
	CustomerResponded bool             `json:"customer_responded"`
	Score             Score            `json:"score"`
	ActualSentMessage string           `json:"actual_sent_message"`
	PositiveRewards   []PositiveReward `json:"positive_rewards"`
	SendTimestamp     time.Time        `json:"send_timestamp"`  // zero when null or absent
	ReplyTimestamp    time.Time        `json:"reply_timestamp"` // zero when null or absent
	InsertedAt        time.Time        `json:"inserted_at"`
}

// BulkFeedbackResponse is the answer of SubmitFeedbackBulk.
type BulkFeedbackResponse struct {
	Success  bool               `json:"success"`
	Count    int                `json:"count"`
	Feedback []FeedbackResponse `json:"feedback"`
}

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

// checkOneOf returns a *ValidationError unless v is in set, or empty and
// optional.
func checkOneOf[T ~string](field string, v T, optional bool, set []T) *ValidationError {
	if v == "" && optional || slices.Contains(set, v) {
		return nil
	}
	if v == "" {
		return &ValidationError{Field: field, Reason: "required"}
	}
	return &ValidationError{Field: field, Reason: fmt.Sprintf("%q is not one of %v", string(v), set)}
}

// isUUID reports whether s is a UUID in its canonical 8-4-4-4-12 hex form.
func isUUID(s string) bool {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return false
	}
	var b [16]byte // on the stack, as are the hex digits joined (32 bytes)
	_, err := hex.Decode(b[:], []byte(s[:8]+s[9:13]+s[14:18]+s[19:23]+s[24:]))
	return err == nil
}

// check validates m; OptimizeMessage's candidate needs no channel.
func (m *Message) check(needChannel bool) *ValidationError {
	if strings.TrimSpace(m.Content) == "" {
		return &ValidationError{Field: "Content", Reason: "required"}
	}
	return checkOneOf("Channel", m.Channel, !needChannel, channels)
}

// check validates m; nil is valid.
func (m *CustomerMetadata) check() *ValidationError {
	if m == nil {
		return nil
	}
	if m.StateID != nil && *m.StateID < 1 {
		return &ValidationError{Field: "StateID", Reason: "want 1 or more"}
	}
	for _, e := range []*ValidationError{
		checkOneOf("CreditScoreBin", m.CreditScoreBin, true, creditScores),
		checkOneOf("RequestedLoanAmountBin", m.RequestedLoanAmountBin, true, loanAmounts),
		checkOneOf("AgeBin", m.AgeBin, true, ages),
		checkOneOf("MonthlyIncomeBin", m.MonthlyIncomeBin, true, incomes),
		checkOneOf("ApplicationReason", m.ApplicationReason, true, reasons),
	} {
		if e != nil {
			return e
		}
	}
	return nil
}

// check validates fb.
func (fb *Feedback) check() *ValidationError {
	if fb.MessageID == "" {
		return &ValidationError{Field: "MessageID", Reason: "required"}
	}
	if e := checkOneOf("Score", fb.Score, false, scores); e != nil {
		return e
	}
	for i, r := range fb.PositiveRewards {
		if e := checkOneOf("", r, false, rewards); e != nil {
			e.Field = fmt.Sprintf("PositiveRewards[%d]", i)
			return e
		}
	}
	return nil
}

// The wire: what the calls send and receive, as the server spells it.

// wireMessage is a Message on the wire.
type wireMessage struct {
	Content       string  `json:"content"`
	Channel       Channel `json:"channel"`
	MessageID     string  `json:"message_id"`
	SendTimestamp string  `json:"send_timestamp"`
	ReplyOrNot    string  `json:"reply_or_not"` // the strings "true" and "false"
}

// wireConversation is what both message calls send before the candidate.
type wireConversation struct {
	Company    string        `json:"company"`
	CustomerID string        `json:"customer_id"`
	ZipCode    string        `json:"zip_code,omitempty"`
	Messages   []wireMessage `json:"messages"`
}

// processBody is the request of ProcessMessage.
type processBody struct {
	wireConversation
	CandidateMessage wireMessage `json:"candidate_message"`
}

// optimizeBody is the request of OptimizeMessage: the candidate's content
// only, and the metadata flat at the top level.
type optimizeBody struct {
	wireConversation
	CandidateMessage string `json:"candidate_message"`

	IsRepeatBorrower       *int              `json:"is_repeat_borrower,omitempty"`
	StateID                *int              `json:"state_id,omitempty"`
	CreditScoreBin         CreditScoreBin    `json:"credit_score_bin,omitempty"`
	RequestedLoanAmountBin LoanAmountBin     `json:"requested_loan_amount_bin,omitempty"`
	AgeBin                 AgeBin            `json:"age_bin,omitempty"`
	MonthlyIncomeBin       MonthlyIncomeBin  `json:"monthly_income_bin,omitempty"`
	ApplicationReason      ApplicationReason `json:"application_reason,omitempty"`
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

// bulkBody is the request of SubmitFeedbackBulk.
type bulkBody struct {
	Feedback []wireFeedback `json:"feedback"`
}

// wireFeedbackResponse is a stored feedback entry as the server sends it,
// with pointers to tell a missing required field from a zero one.
type wireFeedbackResponse struct {
	ID                *string          `json:"id"`
	MessageID         *string          `json:"message_id"`
	CustomerResponded *bool            `json:"customer_responded"`
	Score             *Score           `json:"score"`
	ActualSentMessage string           `json:"actual_sent_message"`
	PositiveRewards   []PositiveReward `json:"positive_rewards"`
	SendTimestamp     *string          `json:"send_timestamp"`
	ReplyTimestamp    *string          `json:"reply_timestamp"`
	InsertedAt        *string          `json:"inserted_at"`
}

// bulkResponse is the answer of SubmitFeedbackBulk on the wire.
type bulkResponse struct {
	Success  *bool                  `json:"success"`
	Count    *int                   `json:"count"`
	Feedback []wireFeedbackResponse `json:"feedback"`
}

// wireTime formats a request timestamp as Python's isoformat does, which
// every server version reads: truncated to the microsecond, six fraction
// digits unless they are all zero, and the time's own offset, UTC as
// +00:00 (2025-01-15T10:30:00.120000+00:00). The zero time is "", left out.
func wireTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	if t = t.Truncate(time.Microsecond); t.Nanosecond() != 0 {
		return t.Format("2006-01-02T15:04:05.000000-07:00")
	}
	return t.Format("2006-01-02T15:04:05-07:00")
}

// parseTime reads a response timestamp leniently: RFC 3339, or with no
// offset (UTC), as Python's isoformat writes it.
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

// stamp puts a checked m on the wire, its id and send time filled when unset.
func (c *Client) stamp(m Message) (wireMessage, error) {
	if m.SendTimestamp.IsZero() {
		m.SendTimestamp = c.now().UTC()
	}
	w := wireMessage{Content: m.Content, Channel: m.Channel, MessageID: m.MessageID,
		SendTimestamp: wireTime(m.SendTimestamp), ReplyOrNot: strconv.FormatBool(m.ReplyOrNot)}
	var err error
	if w.MessageID == "" {
		w.MessageID, err = newID()
	}
	return w, err
}

// wire puts a checked fb on the wire.
func (fb *Feedback) wire() wireFeedback {
	return wireFeedback{MessageID: fb.MessageID, CustomerResponded: fb.CustomerResponded, Score: fb.Score,
		ActualSentMessage: fb.ActualSentMessage, PositiveRewards: fb.PositiveRewards,
		SendTimestamp: wireTime(fb.SendTimestamp), ReplyTimestamp: wireTime(fb.ReplyTimestamp)}
}

// decode reads a stored entry of the answer to rq; field prefixes the names
// of its fields in errors, as in "feedback[2].".
func (w *wireFeedbackResponse) decode(rq *request, field string) (*FeedbackResponse, error) {
	switch {
	case w.ID == nil || *w.ID == "":
		return nil, rq.missing(field + "id")
	case w.MessageID == nil:
		return nil, rq.missing(field + "message_id")
	case w.CustomerResponded == nil:
		return nil, rq.missing(field + "customer_responded")
	case w.Score == nil:
		return nil, rq.missing(field + "score")
	case w.InsertedAt == nil:
		return nil, rq.missing(field + "inserted_at")
	}
	r := &FeedbackResponse{ID: *w.ID, MessageID: *w.MessageID, CustomerResponded: *w.CustomerResponded,
		Score: *w.Score, ActualSentMessage: w.ActualSentMessage, PositiveRewards: w.PositiveRewards}
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
			return nil, rq.errorf(nil, "%s%s: %w", field, t.name, err)
		}
		*t.out = v
	}
	if r.PositiveRewards == nil {
		r.PositiveRewards = []PositiveReward{}
	}
	return r, nil
}

// messageBody checks all of req, metadata included, before any work, and
// puts it on the wire as ProcessMessage sends it; with contentOnly (the
// optimizer, which sends its content only) the candidate is left out.
func (c *Client) messageBody(req MessageRequest, contentOnly bool) (b processBody, err error) {
	b.wireConversation = wireConversation{Company: req.CompanyGUID, CustomerID: req.CustomerID, ZipCode: req.ZipCode}
	if b.Company == "" {
		b.Company = c.cfg.company
	}
	switch {
	case b.Company == "":
		return b, fmt.Errorf("%w: no company GUID: set it in the request, with WithCompanyGUID or in %s", ErrConfig, EnvCompanyGUID)
	case !isUUID(b.Company):
		return b, &ValidationError{Field: "CompanyGUID", Reason: "not a UUID"}
	case !isUUID(req.CustomerID):
		return b, &ValidationError{Field: "CustomerID", Reason: "not a UUID"}
	case req.ZipCode != "" && (len(req.ZipCode) != 5 || strings.Trim(req.ZipCode, "0123456789") != ""):
		return b, &ValidationError{Field: "ZipCode", Reason: "want exactly 5 digits"}
	}
	for i := range req.Messages {
		if e := req.Messages[i].check(true); e != nil {
			return b, e.within(fmt.Sprintf("Messages[%d]", i))
		}
	}
	if e := req.Candidate.check(!contentOnly); e != nil {
		return b, e.within("Candidate")
	}
	if e := req.Metadata.check(); e != nil {
		return b, e.within("Metadata")
	}
	b.Messages = make([]wireMessage, len(req.Messages))
	for i, m := range req.Messages {
		if b.Messages[i], err = c.stamp(m); err != nil {
			return b, err
		}
	}
	if !contentOnly {
		b.CandidateMessage, err = c.stamp(req.Candidate)
	}
	return b, err
}

// ProcessMessage sends a conversation and its candidate message to message
// processing (POST /api/message_processing), missing message ids generated
// and send times set to now; req.Metadata is not sent. Nothing is sent on a
// *ValidationError (req) or an ErrConfig (opts, no company GUID).
func (c *Client) ProcessMessage(ctx context.Context, req MessageRequest, opts ...CallOption) (*ProcessingResponse, error) {
	cfg, err := c.callConfig(opts)
	if err != nil {
		return nil, err
	}
	in, err := c.messageBody(req, false)
	if err != nil {
		return nil, err
	}
	rq := newRequest(http.MethodPost, pathProcess, true)
	var out ProcessingResponse
	if err := c.call(ctx, &rq, &in, &out, cfg); err != nil {
		return nil, err
	}
	switch {
	case out.Company == "":
		return nil, rq.missing("company")
	case out.CustomerID == "":
		return nil, rq.missing("customer_id")
	case out.CandidateMessage.Content == "":
		return nil, rq.missing("candidate_message.content")
	}
	return &out, nil
}

// OptimizeMessage asks for a better wording of req.Candidate and the channel
// to send it on (POST /api/message_optimizer), sending the candidate's
// content only and the metadata fields set. Nothing is sent on a
// *ValidationError (req) or an ErrConfig (opts, no company GUID).
func (c *Client) OptimizeMessage(ctx context.Context, req MessageRequest, opts ...CallOption) (*OptimizationResponse, error) {
	cfg, err := c.callConfig(opts)
	if err != nil {
		return nil, err
	}
	body, err := c.messageBody(req, true)
	if err != nil {
		return nil, err
	}
	rq := newRequest(http.MethodPost, pathOptimize, true)
	in := optimizeBody{wireConversation: body.wireConversation, CandidateMessage: req.Candidate.Content}
	if m := req.Metadata; m != nil {
		if b := m.IsRepeatBorrower; b != nil {
			n := 0
			if *b {
				n = 1
			}
			in.IsRepeatBorrower = &n
		}
		in.StateID = m.StateID
		in.CreditScoreBin, in.RequestedLoanAmountBin = m.CreditScoreBin, m.RequestedLoanAmountBin
		in.AgeBin, in.MonthlyIncomeBin, in.ApplicationReason = m.AgeBin, m.MonthlyIncomeBin, m.ApplicationReason
	}
	var out OptimizationResponse
	if err := c.call(ctx, &rq, &in, &out, cfg); err != nil {
		return nil, err
	}
	switch {
	case out.MessageID == "":
		return nil, rq.missing("message_id")
	case out.OptimizedMessage == "":
		return nil, rq.missing("optimized_message")
	case out.RecommendedChannel == "":
		// A channel this version does not know is kept as sent.
		return nil, rq.missing("recommended_channel")
	}
	return &out, nil
}

// SubmitFeedback reports how a message fared (POST /api/feedback). Several
// entries may be sent for one MessageID over time. Nothing is sent on a
// *ValidationError (fb) or an ErrConfig (opts).
func (c *Client) SubmitFeedback(ctx context.Context, fb Feedback, opts ...CallOption) (*FeedbackResponse, error) {
	cfg, err := c.callConfig(opts)
	if err != nil {
		return nil, err
	}
	if e := fb.check(); e != nil {
		return nil, e
	}
	rq := newRequest(http.MethodPost, pathFeedback, true)
	in := fb.wire()
	var out wireFeedbackResponse
	if err := c.call(ctx, &rq, &in, &out, cfg); err != nil {
		return nil, err
	}
	return out.decode(&rq, "")
}

// SubmitFeedbackBulk reports many feedback entries in one call (POST
// /api/feedback/bulk). items must not be empty, and each is checked first:
// a *ValidationError naming the item (as in "Items[3].Score") means nothing
// was sent. The answer is never silently partial: when the server reports a
// failure or stored fewer entries than were sent, SubmitFeedbackBulk
// returns its answer together with an error matching ErrPartial.
func (c *Client) SubmitFeedbackBulk(ctx context.Context, items []Feedback, opts ...CallOption) (*BulkFeedbackResponse, error) {
	cfg, err := c.callConfig(opts)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return nil, &ValidationError{Field: "Items", Reason: "empty list"}
	}
	in := bulkBody{Feedback: make([]wireFeedback, len(items))}
	for i := range items {
		if e := items[i].check(); e != nil {
			return nil, e.within(fmt.Sprintf("Items[%d]", i))
		}
		in.Feedback[i] = items[i].wire()
	}
	rq := newRequest(http.MethodPost, pathFeedbackBulk, true)
	var out bulkResponse
	if err := c.call(ctx, &rq, &in, &out, cfg); err != nil {
		return nil, err
	}
	if out.Success == nil {
		return nil, rq.missing("success")
	}
	if out.Count == nil {
		return nil, rq.missing("count")
	}
	r := &BulkFeedbackResponse{Success: *out.Success, Count: *out.Count, Feedback: make([]FeedbackResponse, len(out.Feedback))}
	for i := range out.Feedback {
		fr, err := out.Feedback[i].decode(&rq, fmt.Sprintf("feedback[%d].", i))
		if err != nil {
			return nil, err
		}
		r.Feedback[i] = *fr
	}
	switch {
	case !r.Success:
		return r, rq.errorf(ErrPartial, "the server reported failure (count %d of %d)", r.Count, len(items))
	case r.Count != len(items) || len(r.Feedback) != len(items):
		return r, rq.errorf(ErrPartial, "the server stored %d of %d entries (%d returned)", r.Count, len(items), len(r.Feedback))
	}
	return r, nil
}
