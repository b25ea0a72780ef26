// Package apala is a client for the Apala API, a message-analysis service for
// lenders: message processing, message optimisation and feedback.
//
// It uses the standard library only. Create one [Client] with the API key and
// share it; it authenticates on first use and keeps its access token fresh by
// itself:
//
//	c, err := apala.NewClient(key,
//		apala.WithBaseURL("https://api.example.com"),
//		apala.WithCompanyGUID("550e8400-e29b-41d4-a716-446655440000"))
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	opt, err := c.OptimizeMessage(ctx, apala.MessageRequest{...})
//
// The company GUID (your company's UUID, the token answer's company_id) is
// named by every message call, from [WithCompanyGUID] or the request.
// [NewClientFromEnv] reads the key, base URL and company GUID from
// APALA_API_KEY, APALA_BASE_URL and APALA_COMPANY_GUID.
//
// Options configure a client (a [ClientOption], for [NewClient]) or one call
// (a [CallOption], for the message and feedback calls and [Client.Do]), or
// either (an [Option]): retries, timeouts, headers, the idempotency key, and
// [WithResponseInfo] for the status, request id and attempts of a call. An
// option given where it does not apply does not compile.
//
// # Authentication
//
// The API key is exchanged once (POST /api/auth/token) for a JWT access token
// and a refresh token. Every call carries the access token. A token is fresh until the refresh margin before it expires
// ([DefaultRefreshMargin], capped at half its lifetime): callers use it.
// Inside the margin it is stale: callers still use it while one refresh runs
// in the background. Once it is about to expire (a leeway of at most 10s
// before) or when none is held, callers wait for the one token request in
// flight. Its lifetime is counted from when the request was sent; when the
// server gives no expires_in, the JWT's exp claim is read, and failing that
// the token is used until the server rejects it.
//
// Refreshing uses the refresh token (POST /api/auth/refresh); when the server
// refuses it (400, 401 or 403) the client exchanges the API key again. After
// a failed token request, automatic or explicit, no automatic one starts for
// a cooldown (1s doubling to 30s): callers get the last error at once, marked
// "(cached: no new token request until ...)". When an API call is answered
// 401, the token is dropped unless another caller has already replaced it, a
// new one is obtained, and the call is replayed once. [WithAPIKeyFunc] asks a
// function for the key at every exchange (key rotation); [WithTokenStore]
// shares tokens between clients and processes.
//
// # Errors
//
// Every error is prefixed "apala: " and is matched with [errors.Is] or
// [errors.As]:
//   - an answer outside 2xx is an [*APIError] with the status, the method
//     and path, and the server's message; it matches [ErrUnauthorized] (401),
//     [ErrForbidden] (403), [ErrRateLimited] (429) or [ErrServer] (5xx);
//   - a network failure matches [ErrConnection] and unwraps to the
//     [*net/url.Error] underneath;
//   - the caller's context ending unwraps to [context.Canceled] or
//     [context.DeadlineExceeded];
//   - input refused before sending is a [*ValidationError] naming the field,
//     and a problem of the setup matches [ErrConfig];
//   - a bulk feedback answer that stored fewer entries than were sent
//     matches [ErrPartial], and comes with the server's full answer.
//
// Answers are read leniently: an unknown channel, score or reward is kept as
// sent. Connection errors and 408, 429, 500, 502, 503 and 504 answers are retried
// with jittered exponential backoff ([WithMaxRetries], [WithRetryBackoff]),
// honouring Retry-After up to 60s, and never sleeping past the caller's
// deadline; failures no retry can fix (a certificate, a TLS handshake, an
// https URL answered in plain HTTP) take one attempt. Each POST carries an
// Idempotency-Key that stays the same across its retries. Redirects are
// never followed. A call whose context is already done sends nothing.
//
// Retries spend a retry budget per client, so that an outage is not met
// with three times the load: a retry costs 5 of 500, a successful call
// gives 1 back (the AWS SDK's retry quota), so an outage costs at most 100
// retries. A failure not retried for want of budget says so and matches
// what it matched. The 401 replay and token requests do not spend it.
//
// No error, log record, formatted or JSON-encoded value of this package ever
// holds the API key, the access token or the refresh token, nor any run of 8
// bytes of one. For a support ticket, quote [APIError.RequestID].
//
// # Concurrency
//
// A [Client] is safe for concurrent use by any number of goroutines. At most
// one token request is in flight per client; every caller that needs it
// shares its result, and each returns as soon as its own context ends, while
// the request goes on for the others. [Client.Close] ends every wait with
// [ErrClosed] and cancels and waits for that request: no goroutine of the
// client outlives it but a call into user code (a store, the key function)
// that ignores its context.
//
// # Logging
//
// Nothing is logged unless [WithLogger] is given an [*log/slog.Logger]: each
// HTTP attempt at Debug; authentication and refreshes at Info; a retry, a
// refused refresh and a failed automatic token request at Warn. [WithHooks]
// reports attempts and token requests to your metrics and traces.
//
// # Testing
//
// [FakeServer] is an Apala API in memory, as net/http/httptest is for
// net/http: [FakeServer.NewClient] wires the real client to it. It is strict
// and deterministic, scripts answers, records requests, and has a clock a
// test moves, so that token expiry is tested without sleeping.
package apala
