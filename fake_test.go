package apala

// Tests of FakeServer (fake.go): its strictness, its tokens, its answers,
// Respond, Received, its clock, its memory, its test knobs and its
// in-memory transport. No test here times anything: expiry is driven by the
// server's clock (Advance), and waits are on events, each bounded. Their
// helpers are at the top of apala_test.go with everyone's; the request
// bodies only these tests use are below.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeTestOther is a UUID that is not FakeCompanyGUID.
const fakeTestOther = "11111111-2222-4333-8444-555555555555"

// Valid request bodies, each broken one way in TestFakeServerStrict.
const (
	fakeTestMsg        = `{"content":"Hi","channel":"SMS","message_id":"m1","send_timestamp":"2025-01-15T10:30:00Z","reply_or_not":"false"}`
	fakeTestProcessing = `{"company":"` + FakeCompanyGUID + `","customer_id":"` + customerID + `","zip_code":"94107","messages":[` + fakeTestMsg + `],"candidate_message":` + fakeTestMsg + `}`
	fakeTestOptimizer  = `{"company":"` + FakeCompanyGUID + `","customer_id":"` + customerID + `","messages":[` + fakeTestMsg + `],"candidate_message":"Hi","state_id":5,"credit_score_bin":"SCORE_650_700"}`
	fakeTestFeedback   = `{"message_id":"msg-0001","customer_responded":true,"score":"good"}`
	fakeTestBulk       = `{"feedback":[` + fakeTestFeedback + `,` + fakeTestFeedback + `]}`
)

func TestFakeServerStrict(t *testing.T) {
	const (
		proc = "/api/message_processing"
		opt  = "/api/message_optimizer"
		fb   = "/api/feedback"
		bulk = "/api/feedback/bulk"
	)
	// with replaces the first occurrence of old in body.
	with := func(body, old, new string) string {
		t.Helper()
		if !strings.Contains(body, old) {
			t.Fatalf("test body %s lacks %s", body, old)
		}
		return strings.Replace(body, old, new, 1)
	}
	s := NewFakeServer()
	access, refresh := s.grant()
	tests := []struct {
		name       string
		method     string // POST when empty
		path       string
		body       string
		header     map[string]string // "" deletes
		wantStatus int
		wantError  string // in the "error" text; "" for a success or a 401
	}{
		{name: "processing", path: proc, body: fakeTestProcessing, wantStatus: 200},
		{name: "optimizer", path: opt, body: fakeTestOptimizer, wantStatus: 200},
		{name: "feedback", path: fb, body: fakeTestFeedback, wantStatus: 200},
		{name: "bulk", path: bulk, body: fakeTestBulk, wantStatus: 200},
		{name: "content type with charset", path: fb, body: fakeTestFeedback, header: map[string]string{"Content-Type": "Application/JSON; charset=utf-8"}, wantStatus: 200},
		{name: "bearer scheme in lower case", path: fb, body: fakeTestFeedback, header: map[string]string{"Authorization": "bearer " + access}, wantStatus: 200},
		{name: "zip code absent", path: proc, body: with(fakeTestProcessing, `"zip_code":"94107",`, ""), wantStatus: 200},
		{name: "empty conversation", path: opt, body: with(fakeTestOptimizer, `[`+fakeTestMsg+`]`, `[]`), wantStatus: 200},
		{name: "every metadata field", path: opt, body: with(fakeTestOptimizer, `"state_id":5`, `"state_id":50,"is_repeat_borrower":0,"requested_loan_amount_bin":"AMOUNT_10000_PLUS","age_bin":"AGE_60_PLUS","monthly_income_bin":"INCOME_0_2000","application_reason":"WEDDING"`), wantStatus: 200},
		{name: "send time with offset", path: proc, body: with(fakeTestProcessing, `10:30:00Z`, `10:30:00.123456-05:00`), wantStatus: 200},
		{name: "feedback in full", path: fb, body: `{"message_id":"m","customer_responded":false,"score":"neutral","actual_sent_message":"Hi","positive_rewards":["linking_chirp","signing_loan_agreement"],"send_timestamp":"2025-01-15T10:30:00+00:00","reply_timestamp":"2025-01-15T11:30:00.5"}`, wantStatus: 200},

		{name: "unknown field", path: fb, body: with(fakeTestFeedback, `{`, `{"extra":1,`), wantStatus: 422, wantError: `unknown field "extra"`},
		{name: "unknown field in a message", path: proc, body: with(fakeTestProcessing, `"reply_or_not":"false"}`, `"reply_or_not":"false","sender":"x"}`), wantStatus: 422, wantError: `unknown field "sender"`},
		{name: "trailing data", path: fb, body: fakeTestFeedback + ` {}`, wantStatus: 422, wantError: "after the object"},
		{name: "trailing brace", path: fb, body: fakeTestFeedback + `}`, wantStatus: 422, wantError: "after the object"},
		{name: "malformed", path: fb, body: `{"message_id":`, wantStatus: 422, wantError: "malformed JSON"},
		{name: "empty body", path: fb, body: ``, wantStatus: 422, wantError: "empty body"},
		{name: "array body", path: fb, body: `[]`, wantStatus: 422, wantError: "want a JSON object"},
		{name: "company not a UUID", path: proc, body: with(fakeTestProcessing, FakeCompanyGUID, "acme"), wantStatus: 422, wantError: "company: not a UUID"},
		{name: "company missing", path: opt, body: with(fakeTestOptimizer, `"company":"`+FakeCompanyGUID+`",`, ""), wantStatus: 422, wantError: "company: required"},
		{name: "customer not a UUID", path: opt, body: with(fakeTestOptimizer, customerID, "123e4567e89b42d3a456426614174000"), wantStatus: 422, wantError: "customer_id: not a UUID"},
		{name: "another company", path: opt, body: with(fakeTestOptimizer, FakeCompanyGUID, fakeTestOther), wantStatus: 403, wantError: "company does not match the token"},
		{name: "zip code of 4 digits", path: proc, body: with(fakeTestProcessing, "94107", "9410"), wantStatus: 422, wantError: "zip_code"},
		{name: "zip code with a letter", path: opt, body: with(fakeTestOptimizer, `"messages"`, `"zip_code":"9410A","messages"`), wantStatus: 422, wantError: "zip_code"},
		{name: "bad channel", path: proc, body: with(fakeTestProcessing, `"SMS"`, `"FAX"`), wantStatus: 422, wantError: `messages[0].channel: "FAX" is not one of`},
		{name: "channel in lower case", path: proc, body: with(fakeTestProcessing, `"SMS"`, `"sms"`), wantStatus: 422, wantError: "messages[0].channel"},
		{name: "candidate channel missing", path: proc, body: with(fakeTestProcessing, `{"content":"Hi","channel":"SMS","message_id":"m1","send_timestamp":"2025-01-15T10:30:00Z","reply_or_not":"false"}}`, `{"content":"Hi","message_id":"m1","send_timestamp":"2025-01-15T10:30:00Z","reply_or_not":"false"}}`), wantStatus: 422, wantError: "candidate_message.channel: required"},
		{name: "empty content", path: opt, body: with(fakeTestOptimizer, `"content":"Hi"`, `"content":"  "`), wantStatus: 422, wantError: "messages[0].content: required"},
		{name: "reply_or_not as a JSON boolean", path: proc, body: with(fakeTestProcessing, `"reply_or_not":"false"`, `"reply_or_not":false`), wantStatus: 422, wantError: "reply_or_not"},
		{name: "reply_or_not not true or false", path: proc, body: with(fakeTestProcessing, `"reply_or_not":"false"`, `"reply_or_not":"no"`), wantStatus: 422, wantError: `messages[0].reply_or_not: want the string "true" or "false"`},
		{name: "send time without offset", path: proc, body: with(fakeTestProcessing, `10:30:00Z`, `10:30:00`), wantStatus: 422, wantError: "messages[0].send_timestamp"},
		{name: "send time missing", path: opt, body: with(fakeTestOptimizer, `"send_timestamp":"2025-01-15T10:30:00Z",`, ""), wantStatus: 422, wantError: "messages[0].send_timestamp: required"},
		{name: "messages missing", path: opt, body: with(fakeTestOptimizer, `"messages":[`+fakeTestMsg+`],`, ""), wantStatus: 422, wantError: "messages: required"},
		{name: "candidate missing", path: proc, body: with(fakeTestProcessing, `,"candidate_message":`+fakeTestMsg, ""), wantStatus: 422, wantError: "candidate_message: required"},
		{name: "optimizer candidate as an object", path: opt, body: with(fakeTestOptimizer, `"candidate_message":"Hi"`, `"candidate_message":`+fakeTestMsg), wantStatus: 422, wantError: "candidate_message"},
		{name: "bad credit score bin", path: opt, body: with(fakeTestOptimizer, "SCORE_650_700", "SCORE_650"), wantStatus: 422, wantError: "credit_score_bin"},
		{name: "bad loan amount bin", path: opt, body: with(fakeTestOptimizer, `"state_id"`, `"requested_loan_amount_bin":"AMOUNT_1","state_id"`), wantStatus: 422, wantError: "requested_loan_amount_bin"},
		{name: "bad age bin", path: opt, body: with(fakeTestOptimizer, `"state_id"`, `"age_bin":"AGE_17","state_id"`), wantStatus: 422, wantError: "age_bin"},
		{name: "bad income bin", path: opt, body: with(fakeTestOptimizer, `"state_id"`, `"monthly_income_bin":"income_0_2000","state_id"`), wantStatus: 422, wantError: "monthly_income_bin"},
		{name: "bad application reason", path: opt, body: with(fakeTestOptimizer, `"state_id"`, `"application_reason":"FUN","state_id"`), wantStatus: 422, wantError: "application_reason"},
		{name: "repeat borrower 2", path: opt, body: with(fakeTestOptimizer, `"state_id"`, `"is_repeat_borrower":2,"state_id"`), wantStatus: 422, wantError: "is_repeat_borrower"},
		{name: "state id 0", path: opt, body: with(fakeTestOptimizer, `"state_id":5`, `"state_id":0`), wantStatus: 422, wantError: "state_id"},
		{name: "state id as a string", path: opt, body: with(fakeTestOptimizer, `"state_id":5`, `"state_id":"5"`), wantStatus: 422, wantError: "state_id"},
		{name: "feedback without message_id", path: fb, body: with(fakeTestFeedback, `"message_id":"msg-0001",`, ""), wantStatus: 422, wantError: "message_id: required"},
		{name: "feedback without customer_responded", path: fb, body: with(fakeTestFeedback, `"customer_responded":true,`, ""), wantStatus: 422, wantError: "customer_responded: required"},
		{name: "feedback without score", path: fb, body: with(fakeTestFeedback, `,"score":"good"`, ""), wantStatus: 422, wantError: "score: required"},
		{name: "bad score", path: fb, body: with(fakeTestFeedback, `"good"`, `"Good"`), wantStatus: 422, wantError: `score: "Good" is not one of`},
		{name: "bad reward", path: fb, body: with(fakeTestFeedback, `"score"`, `"positive_rewards":["linking_chirp","LINKING_CHIRP"],"score"`), wantStatus: 422, wantError: "positive_rewards[1]"},
		{name: "bad feedback timestamp", path: fb, body: with(fakeTestFeedback, `"score"`, `"reply_timestamp":"yesterday","score"`), wantStatus: 422, wantError: "reply_timestamp"},
		{name: "customer_responded as a string", path: fb, body: with(fakeTestFeedback, `true`, `"true"`), wantStatus: 422, wantError: "customer_responded"},
		{name: "empty bulk list", path: bulk, body: `{"feedback":[]}`, wantStatus: 422, wantError: "feedback: want a non-empty list"},
		{name: "bulk list missing", path: bulk, body: `{}`, wantStatus: 422, wantError: "feedback: want a non-empty list"},
		{name: "bad bulk item", path: bulk, body: with(fakeTestBulk, `"good"}]`, `"great"}]`), wantStatus: 422, wantError: "feedback[1].score"},

		{name: "GET", method: "GET", path: fb, body: fakeTestFeedback, wantStatus: 405, wantError: "POST"},
		{name: "unknown path", path: "/api/feedbacks", body: fakeTestFeedback, wantStatus: 404, wantError: "no such endpoint"},
		{name: "not JSON", path: fb, body: fakeTestFeedback, header: map[string]string{"Content-Type": "text/plain"}, wantStatus: 415, wantError: "application/json"},
		{name: "no content type", path: fb, body: fakeTestFeedback, header: map[string]string{"Content-Type": ""}, wantStatus: 415, wantError: "application/json"},
		{name: "no bearer", path: fb, body: fakeTestFeedback, header: map[string]string{"Authorization": ""}, wantStatus: 401},
		{name: "garbled bearer", path: opt, body: fakeTestOptimizer, header: map[string]string{"Authorization": "Bearer " + access + "x"}, wantStatus: 401},
		{name: "empty bearer", path: fb, body: fakeTestFeedback, header: map[string]string{"Authorization": "Bearer "}, wantStatus: 401},
		{name: "basic scheme", path: fb, body: fakeTestFeedback, header: map[string]string{"Authorization": "Basic " + access}, wantStatus: 401},
		{name: "refresh token as bearer", path: fb, body: fakeTestFeedback, header: map[string]string{"Authorization": "Bearer " + refresh}, wantStatus: 401},
		{name: "401 before 422", path: fb, body: `{"bad":1}`, header: map[string]string{"Authorization": ""}, wantStatus: 401},

		{name: "token: wrong key", path: "/api/auth/token", body: `{"api_key":"wrong"}`, header: map[string]string{"Authorization": ""}, wantStatus: 401, wantError: "invalid API key"},
		{name: "token: extra field", path: "/api/auth/token", body: `{"api_key":"` + FakeAPIKey + `","company":"x"}`, header: map[string]string{"Authorization": ""}, wantStatus: 400, wantError: `unknown field "company"`},
		{name: "token: no key", path: "/api/auth/token", body: `{}`, header: map[string]string{"Authorization": ""}, wantStatus: 400, wantError: "api_key"},
		{name: "token: with Authorization", path: "/api/auth/token", body: `{"api_key":"` + FakeAPIKey + `"}`, wantStatus: 400, wantError: "no Authorization header"},
		{name: "token", path: "/api/auth/token", body: `{"api_key":"` + FakeAPIKey + `"}`, header: map[string]string{"Authorization": ""}, wantStatus: 200},
		{name: "refresh: unknown token", path: "/api/auth/refresh", body: `{"refresh_token":"x.y.z"}`, header: map[string]string{"Authorization": ""}, wantStatus: 401, wantError: "invalid refresh token"},
		{name: "refresh: access token", path: "/api/auth/refresh", body: `{"refresh_token":"` + access + `"}`, header: map[string]string{"Authorization": ""}, wantStatus: 401, wantError: "invalid refresh token"},
		{name: "refresh: key field", path: "/api/auth/refresh", body: `{"api_key":"` + FakeAPIKey + `"}`, header: map[string]string{"Authorization": ""}, wantStatus: 400, wantError: "unknown field"},
		{name: "refresh", path: "/api/auth/refresh", body: `{"refresh_token":"` + refresh + `"}`, header: map[string]string{"Authorization": ""}, wantStatus: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "POST"
			}
			header := map[string]string{"Authorization": "Bearer " + access}
			for k, v := range tt.header {
				header[k] = v
			}
			before := s.Requests(tt.path)
			w := fakeTestPost(s, method, tt.path, tt.body, header)
			if got := s.Requests(tt.path); got != before+1 {
				t.Errorf("Requests(%q) = %d; want %d", tt.path, got, before+1)
			}
			if w.Code != tt.wantStatus {
				t.Fatalf("status = %d; want %d (body %s)", w.Code, tt.wantStatus, fakeTestShow(w.Body.String()))
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json; charset=utf-8" {
				t.Errorf("Content-Type = %q; want application/json; charset=utf-8", ct)
			}
			switch {
			case tt.wantStatus == 401 && tt.wantError == "":
				if got, want := w.Body.String(), `{"errors":{"detail":"Unauthorized"}}`; got != want {
					t.Errorf("401 body = %s; want %s", fakeTestShow(got), want)
				}
			case tt.wantError != "":
				if got := fakeTestError(t, w.Body.Bytes()); !strings.Contains(got, tt.wantError) {
					t.Errorf("error = %q; want it to contain %q", got, tt.wantError)
				}
			default:
				if !json.Valid(w.Body.Bytes()) {
					t.Errorf("answer is not JSON: %s", fakeTestShow(w.Body.String()))
				}
			}
			if tt.wantStatus == 405 && w.Header().Get("Allow") != "POST" {
				t.Errorf("Allow = %q; want POST", w.Header().Get("Allow"))
			}
		})
	}
}

// TestFakeServerClient runs every call of the client against the fake and
// checks the answers, and that Feedback holds what the client was told.
func TestFakeServerClient(t *testing.T) {
	s := NewFakeServer()
	c := fakeTestClient(t, s)
	ctx := context.Background()
	req := fakeTestRequest()

	pr, err := c.ProcessMessage(ctx, req)
	if err != nil {
		t.Fatalf("ProcessMessage() error = %v", err)
	}
	wantPR := ProcessingResponse{Company: FakeCompanyGUID, CustomerID: customerID,
		CandidateMessage: CandidateMessage{Content: "Your payment is due on Friday.", Channel: ChannelSMS, MessageID: "m-3"}}
	if *pr != wantPR {
		t.Errorf("ProcessMessage() = %+v; want %+v", *pr, wantPR)
	}

	long := strings.Repeat("x", 161)
	for i, tt := range []struct {
		candidate string
		want      OptimizationResponse
	}{
		{"  Your payment is due on Friday.  ", OptimizationResponse{MessageID: "msg-0001", OptimizedMessage: "Your payment is due on Friday - reply YES and we will call you today.", OriginalMessage: "  Your payment is due on Friday.  ", RecommendedChannel: ChannelSMS}},
		{strings.Repeat("x", 160), OptimizationResponse{MessageID: "msg-0002", OptimizedMessage: strings.Repeat("x", 160) + fakeOptimizeSuffix, OriginalMessage: strings.Repeat("x", 160), RecommendedChannel: ChannelSMS}},
		{long, OptimizationResponse{MessageID: "msg-0003", OptimizedMessage: long + fakeOptimizeSuffix, OriginalMessage: long, RecommendedChannel: ChannelEmail}},
	} {
		r := req
		r.Candidate = Message{Content: tt.candidate}
		got, err := c.OptimizeMessage(ctx, r)
		if err != nil {
			t.Fatalf("OptimizeMessage(#%d) error = %v", i, err)
		}
		if *got != tt.want {
			t.Errorf("OptimizeMessage(#%d) = %+v; want %+v", i, *got, tt.want)
		}
	}
	var body struct {
		CandidateMessage string `json:"candidate_message"`
		StateID          int    `json:"state_id"`
	}
	if err := json.Unmarshal(s.lastBody("/api/message_optimizer"), &body); err != nil || body.CandidateMessage != long || body.StateID != 5 {
		t.Errorf("lastBody(optimizer) = candidate of %d bytes, state_id %d (err %v); want the last request's", len(body.CandidateMessage), body.StateID, err)
	}
	if h := s.lastHeader("/api/message_optimizer"); h.Get("Idempotency-Key") == "" || !strings.HasPrefix(h.Get("Authorization"), "Bearer ") {
		t.Errorf("lastHeader(optimizer) lacks the Idempotency-Key or the bearer token")
	}

	sent := time.Date(2025, 1, 15, 10, 30, 0, 0, time.UTC)
	var told []FeedbackResponse
	one, err := c.SubmitFeedback(ctx, Feedback{MessageID: "msg-0001", CustomerResponded: true, Score: ScoreGood,
		ActualSentMessage: "Your payment is due on Friday.", PositiveRewards: []PositiveReward{RewardLinkingChirp}, SendTimestamp: sent, ReplyTimestamp: sent.Add(time.Hour)})
	if err != nil {
		t.Fatalf("SubmitFeedback() error = %v", err)
	}
	told = append(told, *one)
	if one.ID != "fb-0001" || !one.SendTimestamp.Equal(sent) || !one.ReplyTimestamp.Equal(sent.Add(time.Hour)) || one.InsertedAt.IsZero() {
		t.Errorf("SubmitFeedback() = %+v; want fb-0001 with the times sent and an insertion time", *one)
	}
	bulk, err := c.SubmitFeedbackBulk(ctx, []Feedback{
		{MessageID: "msg-0002", Score: ScoreBad},
		{MessageID: "msg-0003", CustomerResponded: true, Score: ScoreNeutral},
	})
	if err != nil {
		t.Fatalf("SubmitFeedbackBulk() error = %v", err)
	}
	if !bulk.Success || bulk.Count != 2 || len(bulk.Feedback) != 2 || bulk.Feedback[0].ID != "fb-0002" || bulk.Feedback[1].ID != "fb-0003" {
		t.Errorf("SubmitFeedbackBulk() = %+v; want success, 2 entries fb-0002 and fb-0003", *bulk)
	}
	told = append(told, bulk.Feedback...)
	if got := s.Feedback(); !reflect.DeepEqual(got, told) {
		t.Errorf("Feedback() = %+v;\nwant what the client was told: %+v", got, told)
	}
	for path, want := range map[string]int{"/api/auth/token": 1, "/api/auth/refresh": 0, "/api/message_processing": 1, "/api/message_optimizer": 3, "/api/feedback": 1, "/api/feedback/bulk": 1} {
		if got := s.Requests(path); got != want {
			t.Errorf("Requests(%q) = %d; want %d", path, got, want)
		}
	}
}

// TestFakeServerAnswers checks the exact bodies of the feedback endpoints
// against the wire protocol, with the server's clock fixed.
func TestFakeServerAnswers(t *testing.T) {
	s := NewFakeServer()
	s.setClock(time.Date(2025, 1, 15, 10, 30, 0, 123456789, time.FixedZone("CET", -3600)))
	access, _ := s.grant()
	auth := map[string]string{"Authorization": "Bearer " + access}
	tests := []struct {
		path, body, want string
	}{
		{"/api/feedback", `{"message_id":"m1","customer_responded":false,"score":"neutral"}`,
			`{"id":"fb-0001","message_id":"m1","customer_responded":false,"score":"neutral","actual_sent_message":null,"positive_rewards":[],"send_timestamp":null,"reply_timestamp":null,"inserted_at":"2025-01-15T11:30:00.123456"}`},
		{"/api/feedback", `{"message_id":"m2","customer_responded":true,"score":"good","actual_sent_message":"Hi","positive_rewards":["linking_chirp"],"send_timestamp":"2025-01-15T10:30:00+00:00","reply_timestamp":"2025-01-15T11:00:00Z"}`,
			`{"id":"fb-0002","message_id":"m2","customer_responded":true,"score":"good","actual_sent_message":"Hi","positive_rewards":["linking_chirp"],"send_timestamp":"2025-01-15T10:30:00+00:00","reply_timestamp":"2025-01-15T11:00:00Z","inserted_at":"2025-01-15T11:30:00.123456"}`},
		{"/api/feedback/bulk", `{"feedback":[{"message_id":"m3","customer_responded":true,"score":"bad"}]}`,
			`{"success":true,"count":1,"feedback":[{"id":"fb-0003","message_id":"m3","customer_responded":true,"score":"bad","actual_sent_message":null,"positive_rewards":[],"send_timestamp":null,"reply_timestamp":null,"inserted_at":"2025-01-15T11:30:00.123456"}]}`},
		{"/api/message_processing", fakeTestProcessing,
			`{"company":"` + FakeCompanyGUID + `","customer_id":"` + customerID + `","candidate_message":{"content":"Hi","channel":"SMS","message_id":"m1"}}`},
		{"/api/message_optimizer", fakeTestOptimizer,
			`{"message_id":"msg-0001","optimized_message":"Hi - reply YES and we will call you today.","recommended_channel":"SMS","original_message":"Hi"}`},
	}
	for _, tt := range tests {
		w := fakeTestPost(s, "POST", tt.path, tt.body, auth)
		if got := w.Body.String(); w.Code != 200 || got != tt.want {
			t.Errorf("POST %s = %d %s;\nwant 200 %s", tt.path, w.Code, got, tt.want)
		}
	}

	inserted := time.Date(2025, 1, 15, 11, 30, 0, 123456000, time.UTC)
	got := s.Feedback()
	want := []FeedbackResponse{
		{ID: "fb-0001", MessageID: "m1", Score: ScoreNeutral, PositiveRewards: []PositiveReward{}, InsertedAt: inserted},
		{ID: "fb-0002", MessageID: "m2", CustomerResponded: true, Score: ScoreGood, ActualSentMessage: "Hi", PositiveRewards: []PositiveReward{RewardLinkingChirp},
			SendTimestamp: time.Date(2025, 1, 15, 10, 30, 0, 0, time.UTC), ReplyTimestamp: time.Date(2025, 1, 15, 11, 0, 0, 0, time.UTC), InsertedAt: inserted},
		{ID: "fb-0003", MessageID: "m3", CustomerResponded: true, Score: ScoreBad, PositiveRewards: []PositiveReward{}, InsertedAt: inserted},
	}
	if len(got) != len(want) {
		t.Fatalf("Feedback() has %d entries; want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.ID != w.ID || g.MessageID != w.MessageID || g.CustomerResponded != w.CustomerResponded || g.Score != w.Score ||
			g.ActualSentMessage != w.ActualSentMessage || !reflect.DeepEqual(g.PositiveRewards, w.PositiveRewards) ||
			!g.SendTimestamp.Equal(w.SendTimestamp) || !g.ReplyTimestamp.Equal(w.ReplyTimestamp) || !g.InsertedAt.Equal(w.InsertedAt) {
			t.Errorf("Feedback()[%d] = %+v; want %+v", i, g, w)
		}
	}

	// A copy: changing it changes nothing in the server.
	got[1].PositiveRewards[0] = "changed"
	got[0].ID = "changed"
	if again := s.Feedback(); again[0].ID != "fb-0001" || again[1].PositiveRewards[0] != RewardLinkingChirp {
		t.Errorf("Feedback() after changing its result = %+v; want the server's entries unchanged", again[:2])
	}
}

func TestFakeServerAuth(t *testing.T) {
	s := NewFakeServer()
	t0 := time.Date(2025, 1, 15, 10, 0, 0, 0, time.UTC)
	s.setClock(t0)
	c := fakeTestClient(t, s)
	ctx := context.Background()

	ar, err := c.Authenticate(ctx)
	if err != nil {
		t.Fatalf("Authenticate() error = %v", err)
	}
	refresh := c.pair.Load().refresh
	if ar.CompanyID != FakeCompanyGUID || ar.CompanyName != "Acme Lending" || lifetime(c.pair.Load()) != time.Hour || ar.TokenType != "Bearer" {
		t.Errorf("Authenticate() = %v; want company %s, Acme Lending, 3600s, Bearer", ar, FakeCompanyGUID)
	}
	if got, want := string(s.lastBody("/api/auth/token")), `{"api_key":"`+FakeAPIKey+`"}`; got != want {
		t.Errorf("token request body differs from {\"api_key\": FakeAPIKey} (body withheld)")
	}
	for _, tok := range []struct{ name, value, typ string }{{"access", ar.AccessToken, "access"}, {"refresh", refresh, "refresh"}} {
		parts := strings.Split(tok.value, ".")
		if len(parts) != 3 {
			t.Fatalf("%s token has %d dot-separated parts; want 3 (a JWT)", tok.name, len(parts))
		}
		if !strings.Contains(parts[2], secretMarker) {
			t.Errorf("%s token's signature lacks the word %s", tok.name, secretMarker)
		}
		for i, p := range parts {
			if _, err := base64.RawURLEncoding.DecodeString(p); err != nil {
				t.Errorf("%s token part %d is not base64url: %v", tok.name, i, err)
			}
		}
		raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var claims struct {
			Sub string `json:"sub"`
			Typ string `json:"typ"`
			Exp int64  `json:"exp"`
		}
		if err := json.Unmarshal(raw, &claims); err != nil {
			t.Fatalf("%s token claims: %v", tok.name, err)
		}
		wantExp := t0.Add(time.Hour).Unix()
		if tok.typ == "refresh" {
			wantExp = t0.Add(7 * 24 * time.Hour).Unix()
		}
		if claims.Sub != FakeCompanyGUID || claims.Typ != tok.typ || claims.Exp != wantExp {
			t.Errorf("%s token claims = %+v; want sub %s, typ %s, exp %d", tok.name, claims, FakeCompanyGUID, tok.typ, wantExp)
		}
	}
	if exp, ok := jwtExpiry(ar.AccessToken); !ok || !exp.Equal(t0.Add(time.Hour)) {
		t.Errorf("the client reads the access token's exp as %v, %v; want %v", exp, ok, t0.Add(time.Hour))
	}

	// A refresh keeps the refresh token: the answer has none.
	rr, err := c.RefreshAccessToken(ctx)
	if err != nil {
		t.Fatalf("RefreshAccessToken() error = %v", err)
	}
	if rr.AccessToken == ar.AccessToken || lifetime(c.pair.Load()) != time.Hour || rr.TokenType != "Bearer" {
		t.Errorf("RefreshAccessToken() gave the same token, or lifetime %v, TokenType %q; want a new one, 1h, Bearer", lifetime(c.pair.Load()), rr.TokenType)
	}
	if h := s.lastHeader("/api/auth/refresh"); h.Get("Authorization") != "" || h.Get("Content-Type") != "application/json" {
		t.Errorf("refresh request: Authorization set %v, Content-Type %q; want none, application/json", h.Get("Authorization") != "", h.Get("Content-Type"))
	}
	refreshBody := `{"refresh_token":"` + refresh + `"}`
	if string(s.lastBody("/api/auth/refresh")) != refreshBody {
		t.Errorf("refresh request body is not {\"refresh_token\": <the one issued>} (body withheld)")
	}
	w := fakeTestPost(s, "POST", "/api/auth/refresh", refreshBody, nil)
	var keys map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &keys); err != nil || w.Code != 200 {
		t.Fatalf("refresh: status %d, decoding: %v", w.Code, err)
	}
	if _, ok := keys["refresh_token"]; ok || len(keys) != 3 {
		t.Errorf("refresh answer has fields %d (refresh_token among them: %v); want access_token, token_type, expires_in", len(keys), ok)
	}

	// Knobs: the raw expires_in, none at all; and rotation.
	s.setKnobs(func() { s.expiresIn = -5 })
	if n, _ := wireExpiresIn(t, s); n != -5 {
		t.Errorf("expires_in with expiresIn -5 = %d; want -5", n)
	}
	s.setKnobs(func() { s.noExpiry = true })
	s.RotateRefreshTokens(true)
	for _, path := range []string{"/api/auth/token", "/api/auth/refresh"} {
		body := `{"api_key":"` + FakeAPIKey + `"}`
		if path == "/api/auth/refresh" {
			body = refreshBody
		}
		w := fakeTestPost(s, "POST", path, body, nil)
		var keys map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &keys); err != nil || w.Code != 200 {
			t.Fatalf("%s with noExpiry: status %d, decoding: %v", path, w.Code, err)
		}
		if _, ok := keys["expires_in"]; ok {
			t.Errorf("%s with noExpiry: answer has expires_in", path)
		}
		if _, ok := keys["refresh_token"]; !ok {
			t.Errorf("%s with rotation: answer has no refresh_token", path)
		}
	}
	if w := fakeTestPost(s, "POST", "/api/auth/refresh", refreshBody, nil); w.Code != 401 {
		t.Errorf("refresh with a rotated-out token: status %d; want 401", w.Code)
	}
}

func TestFakeServerSetTokenLifetime(t *testing.T) {
	tests := []struct {
		life          time.Duration
		wantExpiresIn int
	}{
		{time.Hour, 3600},
		{90 * time.Second, 90},
		{90*time.Second + 999*time.Millisecond, 90},
		{500 * time.Millisecond, 0},
		{-1500 * time.Millisecond, -1},
	}
	for _, tt := range tests {
		t.Run(tt.life.String(), func(t *testing.T) {
			s := NewFakeServer()
			t0 := time.Date(2025, 1, 15, 10, 0, 0, 0, time.UTC)
			advance := s.setClock(t0)
			s.SetTokenLifetime(tt.life)
			c := fakeTestClient(t, s)
			ar, err := c.Authenticate(context.Background())
			if err != nil {
				t.Fatalf("Authenticate() error = %v", err)
			}
			if n, _ := wireExpiresIn(t, s); n != tt.wantExpiresIn {
				t.Errorf("expires_in = %d; want %d", n, tt.wantExpiresIn)
			}
			// The token is accepted until its lifetime ends, by the
			// server's clock, and refused from then on.
			auth := map[string]string{"Authorization": "Bearer " + ar.AccessToken}
			if tt.life > 0 {
				advance(tt.life - time.Nanosecond)
				if w := fakeTestPost(s, "POST", "/api/feedback", fakeTestFeedback, auth); w.Code != 200 {
					t.Errorf("1ns before expiry: status %d; want 200", w.Code)
				}
				advance(time.Nanosecond)
			}
			if w := fakeTestPost(s, "POST", "/api/feedback", fakeTestFeedback, auth); w.Code != 401 {
				t.Errorf("at expiry: status %d; want 401", w.Code)
			}
		})
	}
}

// TestFakeServerExpiredToken: a token expired by the server's clock is
// refused with 401, and a client over a socket, which judges its token by
// real time, recovers by refreshing it.
func TestFakeServerExpiredToken(t *testing.T) {
	s := NewFakeServer()
	srv := httptest.NewServer(s)
	defer srv.Close()
	c := newTestClient(t, WithBaseURL(srv.URL))
	ctx := context.Background()
	if _, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}); err != nil {
		t.Fatalf("SubmitFeedback() error = %v", err)
	}
	old := c.Token().AccessToken

	s.Advance(time.Hour)
	w := fakeTestPost(s, "POST", "/api/feedback", fakeTestFeedback, map[string]string{"Authorization": "Bearer " + old})
	if got, want := w.Body.String(), `{"errors":{"detail":"Unauthorized"}}`; w.Code != 401 || got != want {
		t.Fatalf("expired token: %d %s; want 401 %s", w.Code, fakeTestShow(got), want)
	}
	// The client still holds it as fresh (real time has not moved): the
	// 401 makes it refresh and replay.
	if _, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}); err != nil {
		t.Fatalf("SubmitFeedback() with an expired token: error = %v", err)
	}
	if c.Token().AccessToken == old {
		t.Errorf("the client still holds the expired token")
	}
	for path, want := range map[string]int{"/api/auth/token": 1, "/api/auth/refresh": 1, "/api/feedback": 4} {
		if got := s.Requests(path); got != want {
			t.Errorf("Requests(%q) = %d; want %d", path, got, want)
		}
	}
	if n := len(s.Feedback()); n != 2 {
		t.Errorf("len(Feedback()) = %d; want 2", n)
	}
}

// TestFakeServerRevokeTokens: revoked tokens are refused, the refresh
// included, and a client recovers through the API key.
func TestFakeServerRevokeTokens(t *testing.T) {
	s := NewFakeServer()
	c := fakeTestClient(t, s)
	ctx := context.Background()
	if _, err := c.OptimizeMessage(ctx, fakeTestRequest()); err != nil {
		t.Fatalf("OptimizeMessage() error = %v", err)
	}
	old := c.Token().AccessToken
	s.RevokeTokens()
	if w := fakeTestPost(s, "POST", "/api/feedback", fakeTestFeedback, map[string]string{"Authorization": "Bearer " + old}); w.Code != 401 {
		t.Errorf("revoked token: status %d; want 401", w.Code)
	}
	res, err := c.OptimizeMessage(ctx, fakeTestRequest())
	if err != nil {
		t.Fatalf("OptimizeMessage() after RevokeTokens: error = %v", err)
	}
	if res.MessageID != "msg-0002" {
		t.Errorf("MessageID = %q; want msg-0002", res.MessageID)
	}
	// One refused request, one refused refresh, one new exchange, the replay.
	for path, want := range map[string]int{"/api/auth/token": 2, "/api/auth/refresh": 1, "/api/message_optimizer": 3} {
		if got := s.Requests(path); got != want {
			t.Errorf("Requests(%q) = %d; want %d", path, got, want)
		}
	}
	if c.Token().AccessToken == old {
		t.Errorf("the client still holds the revoked token")
	}
}

// TestFakeServerKnobs: the knobs the package's tests set beyond the
// exported API. apiKey replaces the key the token endpoint accepts; the
// tests' revokeAccess refuses the access tokens issued so far and keeps the
// refresh tokens.
func TestFakeServerKnobs(t *testing.T) {
	s := NewFakeServer()
	s.setKnobs(func() { s.apiKey = "other-SECRET-key" })
	for _, tt := range []struct {
		name, key string
		want      int
	}{{"FakeAPIKey", FakeAPIKey, 401}, {"the apiKey knob's", "other-SECRET-key", 200}} {
		if w := fakeTestPost(s, "POST", "/api/auth/token", `{"api_key":"`+tt.key+`"}`, nil); w.Code != tt.want {
			t.Errorf("token request with %s key: status %d; want %d", tt.name, w.Code, tt.want)
		}
	}

	access, refresh := s.grant()
	s.revokeAccess()
	if w := fakeTestPost(s, "POST", "/api/feedback", fakeTestFeedback, map[string]string{"Authorization": "Bearer " + access}); w.Code != 401 {
		t.Errorf("access token after revokeAccess: status %d; want 401", w.Code)
	}
	if w := fakeTestPost(s, "POST", "/api/auth/refresh", `{"refresh_token":"`+refresh+`"}`, nil); w.Code != 200 {
		t.Errorf("refresh token after revokeAccess: status %d; want 200", w.Code)
	}
}

func TestFakeServerIdempotency(t *testing.T) {
	s := NewFakeServer()
	access, _ := s.grant()
	post := func(path, key, body string) *httptest.ResponseRecorder {
		return fakeTestPost(s, "POST", path, body, map[string]string{"Authorization": "Bearer " + access, "Idempotency-Key": key})
	}
	first := post("/api/feedback", "k1", fakeTestFeedback)
	again := post("/api/feedback", "k1", fakeTestFeedback)
	if first.Code != 200 || again.Code != first.Code || again.Body.String() != first.Body.String() {
		t.Errorf("same key twice: %d %s, then %d %s; want the first answer again", first.Code, first.Body, again.Code, again.Body)
	}
	if again.Header().Get("Idempotent-Replayed") != "true" || first.Header().Get("Idempotent-Replayed") != "" {
		t.Errorf("Idempotent-Replayed = %q, then %q; want none, then true", first.Header().Get("Idempotent-Replayed"), again.Header().Get("Idempotent-Replayed"))
	}
	if n := len(s.Feedback()); n != 1 {
		t.Errorf("len(Feedback()) after a replay = %d; want 1", n)
	}
	// A resent call may carry another body (message calls generate ids
	// and times each time): the first answer again all the same.
	if w := post("/api/feedback", "k1", strings.Replace(fakeTestFeedback, "good", "bad", 1)); w.Code != 200 || w.Body.String() != first.Body.String() || len(s.Feedback()) != 1 {
		t.Errorf("same key, another body: status %d, %d stored; want the first answer again, 1 stored", w.Code, len(s.Feedback()))
	}
	tests := []struct {
		path, key, body, wantID string
	}{
		{"/api/feedback", "k2", fakeTestFeedback, `"id":"fb-0002"`},
		{"/api/feedback", "", fakeTestFeedback, `"id":"fb-0003"`}, // no key: served, not remembered
		{"/api/feedback", "", fakeTestFeedback, `"id":"fb-0004"`},
		{"/api/message_optimizer", "k1", fakeTestOptimizer, `"message_id":"msg-0001"`}, // keys are per path
		{"/api/message_optimizer", "k1", fakeTestOptimizer, `"message_id":"msg-0001"`},
		{"/api/message_optimizer", "k3", fakeTestOptimizer, `"message_id":"msg-0002"`},
	}
	for _, tt := range tests {
		if w := post(tt.path, tt.key, tt.body); w.Code != 200 || !strings.Contains(w.Body.String(), tt.wantID) {
			t.Errorf("POST %s with key %q = %d %s; want 200 with %s", tt.path, tt.key, w.Code, w.Body, tt.wantID)
		}
	}
	if n := len(s.Feedback()); n != 4 {
		t.Errorf("len(Feedback()) = %d; want 4", n)
	}
	// A refused request is not remembered: the same key then succeeds.
	if w := post("/api/feedback", "k4", `{}`); w.Code != 422 {
		t.Errorf("bad body: status %d; want 422", w.Code)
	}
	if w := post("/api/feedback", "k4", fakeTestFeedback); w.Code != 200 {
		t.Errorf("after a refusal, the same key: status %d; want 200", w.Code)
	}

	// Through the client: a retry after a 503 carries the same key and is
	// stored once; replaying its request by hand gives its answer again.
	c := fakeTestClient(t, s)
	s.Fail("/api/feedback", http.StatusServiceUnavailable, "busy")
	got, err := c.SubmitFeedback(context.Background(), Feedback{MessageID: "retried", Score: ScoreGood})
	if err != nil {
		t.Fatalf("SubmitFeedback() error = %v", err)
	}
	if got.ID != "fb-0006" || len(s.Feedback()) != 6 {
		t.Errorf("SubmitFeedback() after a retry: ID %s, %d stored; want fb-0006, 6", got.ID, len(s.Feedback()))
	}
	h := s.lastHeader("/api/feedback")
	w := post("/api/feedback", h.Get("Idempotency-Key"), string(s.lastBody("/api/feedback")))
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"id":"fb-0006","message_id":"retried"`) || len(s.Feedback()) != 6 {
		t.Errorf("the client's request replayed: %d %s, %d stored; want fb-0006 again, 6 stored", w.Code, w.Body, len(s.Feedback()))
	}
}

// TestFakeServerDeterministic: two fresh servers given the same calls give
// the same answers.
func TestFakeServerDeterministic(t *testing.T) {
	run := func() string {
		s := NewFakeServer()
		c := fakeTestClient(t, s)
		ctx := context.Background()
		var out []any
		for _, text := range []string{"Pay by Friday.", "Your loan is approved"} {
			req := fakeTestRequest()
			req.Candidate = Message{Content: text}
			r, err := c.OptimizeMessage(ctx, req)
			if err != nil {
				t.Fatalf("OptimizeMessage() error = %v", err)
			}
			out = append(out, *r)
		}
		p, err := c.ProcessMessage(ctx, fakeTestRequest())
		if err != nil {
			t.Fatalf("ProcessMessage() error = %v", err)
		}
		out = append(out, *p)
		f, err := c.SubmitFeedback(ctx, Feedback{MessageID: "msg-0001", Score: ScoreGood})
		if err != nil {
			t.Fatalf("SubmitFeedback() error = %v", err)
		}
		b, err := c.SubmitFeedbackBulk(ctx, []Feedback{{MessageID: "msg-0002", Score: ScoreBad}, {MessageID: "msg-0002", Score: ScoreGood}})
		if err != nil {
			t.Fatalf("SubmitFeedbackBulk() error = %v", err)
		}
		for _, fr := range append([]FeedbackResponse{*f}, b.Feedback...) {
			out = append(out, fr) // inserted_at included: the server's clock is fixed
		}
		return fmt.Sprintf("%+v", out)
	}
	if a, b := run(), run(); a != b {
		t.Errorf("second server answered\n%s\nwant the first's\n%s", b, a)
	}
}

func TestFakeServerFail(t *testing.T) {
	s := NewFakeServer()
	c := fakeTestClient(t, s, WithMaxRetries(0))
	ctx := context.Background()

	// Queued answers come in order, then the server answers again.
	s.Fail("/api/message_optimizer", http.StatusServiceUnavailable, "maintenance")
	s.Fail("/api/message_optimizer", http.StatusTooManyRequests, `slow "down"`)
	for _, want := range []struct {
		status int
		msg    string
	}{{503, "maintenance"}, {429, `slow "down"`}} {
		_, err := c.OptimizeMessage(ctx, fakeTestRequest())
		var ae *APIError
		if !errors.As(err, &ae) || ae.StatusCode != want.status || ae.Message != want.msg {
			t.Errorf("OptimizeMessage() error = %v; want an *APIError %d %q", err, want.status, want.msg)
		}
	}
	if res, err := c.OptimizeMessage(ctx, fakeTestRequest()); err != nil || res.MessageID != "msg-0001" {
		t.Errorf("OptimizeMessage() after the failures = %v, %v; want msg-0001", res, err)
	}
	if got := s.Requests("/api/message_optimizer"); got != 3 {
		t.Errorf("Requests(optimizer) = %d; want 3", got)
	}

	// Before every check: a token exchange fails, and so does a request
	// that would be refused.
	s.Fail("/api/auth/token", http.StatusForbidden, "key lacks permissions")
	if _, err := c.Authenticate(ctx); !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "key lacks permissions") {
		t.Errorf("Authenticate() error = %v; want ErrForbidden with the message", err)
	}
	s.Fail("/nowhere", http.StatusBadGateway, "upstream")
	if w := fakeTestPost(s, "GET", "/nowhere", "", nil); w.Code != 502 || fakeTestError(t, w.Body.Bytes()) != "upstream" {
		t.Errorf("failed GET on an unknown path = %d %s; want 502 upstream", w.Code, w.Body)
	}

}

// TestFakeServerHook: the hook runs first and may answer; an answer it
// gives leaves the queued ones in place.
func TestFakeServerHook(t *testing.T) {
	s := NewFakeServer()
	var seen []string
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		b, _ := io.ReadAll(r.Body)
		seen = append(seen, r.Method+" "+r.URL.Path+" "+string(b)) // requests here are sequential
		if r.URL.Path == "/api/feedback" {
			w.WriteHeader(http.StatusTeapot)
			return true
		}
		return false
	})
	s.Fail("/api/feedback", http.StatusServiceUnavailable, "later")
	if w := fakeTestPost(s, "POST", "/api/feedback", `{"a":1}`, nil); w.Code != http.StatusTeapot {
		t.Errorf("hooked request: status %d; want 418", w.Code)
	}
	if w := fakeTestPost(s, "POST", "/api/nothing", `{"b":2}`, nil); w.Code != 404 {
		t.Errorf("request the hook let through: status %d; want 404", w.Code)
	}
	if want := []string{`POST /api/feedback {"a":1}`, `POST /api/nothing {"b":2}`}; !reflect.DeepEqual(seen, want) {
		t.Errorf("the hook saw %q; want %q", seen, want)
	}
	s.setHook(nil)
	if w := fakeTestPost(s, "POST", "/api/feedback", `{}`, nil); w.Code != 503 {
		t.Errorf("after the hook: status %d; want the queued 503", w.Code)
	}
	if got := s.Requests("/api/feedback"); got != 2 {
		t.Errorf("Requests(feedback) = %d; want 2", got)
	}
}

// TestFakeServerConcurrent: many goroutines share one server and one
// client; every call succeeds and every count is exact.
func TestFakeServerConcurrent(t *testing.T) {
	const goroutines, calls = 50, 20
	s := NewFakeServer()
	c := fakeTestClient(t, s)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*calls)
	ids := make(chan string, goroutines*calls)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < calls; i++ {
				if (g+i)%2 == 0 {
					res, err := c.OptimizeMessage(ctx, fakeTestRequest())
					if err != nil {
						errs <- err
						continue
					}
					ids <- res.MessageID
				} else {
					res, err := c.SubmitFeedback(ctx, Feedback{MessageID: fmt.Sprintf("g%d-%d", g, i), Score: ScoreGood})
					if err != nil {
						errs <- err
						continue
					}
					ids <- res.ID
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	close(ids)
	for err := range errs {
		t.Errorf("call failed: %v", err)
	}
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Errorf("id %s given twice", id)
		}
		seen[id] = true
	}
	const half = goroutines * calls / 2
	for i := 1; i <= half; i++ {
		for _, id := range []string{fmt.Sprintf("msg-%04d", i), fmt.Sprintf("fb-%04d", i)} {
			if !seen[id] {
				t.Errorf("id %s never given", id)
			}
		}
	}
	for path, want := range map[string]int{"/api/auth/token": 1, "/api/auth/refresh": 0, "/api/message_optimizer": half, "/api/feedback": half} {
		if got := s.Requests(path); got != want {
			t.Errorf("Requests(%q) = %d; want %d", path, got, want)
		}
	}
	if got := len(s.Feedback()); got != half {
		t.Errorf("len(Feedback()) = %d; want %d", got, half)
	}

	// Received holds each request once: the feedback ids sent, each
	// Idempotency-Key once, and "" merges the paths in arrival order.
	sent := map[string]bool{}
	keys := map[string]bool{}
	for _, r := range s.Received("/api/feedback") {
		var in struct {
			MessageID string `json:"message_id"`
		}
		if err := json.Unmarshal(r.Body, &in); err != nil || sent[in.MessageID] {
			t.Errorf("Received(feedback): body %s undecodable or seen twice (err %v)", r.Body, err)
		}
		sent[in.MessageID] = true
		keys[r.Header.Get("Idempotency-Key")] = true
	}
	for g := 0; g < goroutines; g++ {
		for i := 0; i < calls; i++ {
			if id := fmt.Sprintf("g%d-%d", g, i); (g+i)%2 == 1 && !sent[id] {
				t.Errorf("Received(feedback) lacks message %s", id)
			}
		}
	}
	if len(sent) != half || len(keys) != half {
		t.Errorf("Received(feedback) = %d messages, %d keys; want %d of each", len(sent), len(keys), half)
	}
	all := s.Received("")
	if got, want := len(all), 2*half+1; got != want {
		t.Errorf("len(Received(\"\")) = %d; want %d", got, want)
	}
	perPath := map[string][]FakeRequest{}
	for _, r := range all {
		perPath[r.Path] = append(perPath[r.Path], r)
	}
	for _, path := range []string{"/api/auth/token", "/api/message_optimizer", "/api/feedback"} {
		if got, want := perPath[path], s.Received(path); !reflect.DeepEqual(got, want) || len(want) != s.Requests(path) {
			t.Errorf("Received(\"\") has %d requests of %s, Received(%[2]q) %d, Requests %d; want the same, in the same order", len(got), path, len(want), s.Requests(path))
		}
	}
}

// TestFakeServerContextCancel: the in-memory transport returns when the
// request's context ends, while the handler is still running.
func TestFakeServerContextCancel(t *testing.T) {
	s := NewFakeServer()
	c := fakeTestClient(t, s)
	if _, err := c.AccessToken(context.Background()); err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{})
	release := make(chan struct{})
	handlerDone := make(chan struct{})
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/api/message_optimizer" {
			return false
		}
		defer close(handlerDone)
		close(entered)
		<-release
		return false
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	result := make(chan error, 1)
	go func() {
		_, err := c.OptimizeMessage(ctx, fakeTestRequest())
		result <- err
	}()
	<-entered
	cancel()
	if err := <-result; !errors.Is(err, context.Canceled) {
		t.Errorf("OptimizeMessage() with its context canceled: error = %v; want context.Canceled", err)
	}
	close(release) // the handler ends, its answer unread
	<-handlerDone
	if got := s.Requests("/api/message_optimizer"); got != 1 {
		t.Errorf("Requests(optimizer) = %d; want 1 (no retry after a cancellation)", got)
	}

	// A context already ended: nothing is sent.
	if _, err := c.OptimizeMessage(ctx, fakeTestRequest()); !errors.Is(err, context.Canceled) {
		t.Errorf("OptimizeMessage() with an ended context: error = %v; want context.Canceled", err)
	}
	if got := s.Requests("/api/message_optimizer"); got != 1 {
		t.Errorf("Requests(optimizer) = %d; want still 1", got)
	}
}

// fakeTestBody is a request body that records its closing.
type fakeTestBody struct {
	io.Reader
	closed bool
}

func (b *fakeTestBody) Close() error { b.closed = true; return nil }

// TestFakeServerTransport checks the in-memory round trip as an
// http.RoundTripper: the response it builds, the body it closes, the panic
// it survives.
func TestFakeServerTransport(t *testing.T) {
	s := NewFakeServer()
	access, _ := s.grant()
	tr := &fakeTransport{s: s}
	newReq := func(body *fakeTestBody) *http.Request {
		req, err := http.NewRequest("POST", "http://apala.invalid/api/feedback", body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+access)
		return req
	}

	body := &fakeTestBody{Reader: strings.NewReader(fakeTestFeedback)}
	req := newReq(body)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("RoundTrip() error = %v", err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Status != "200 OK" || resp.Request != req || resp.ContentLength != int64(len(got)) ||
		resp.Header.Get("Content-Type") != "application/json; charset=utf-8" || !bytes.HasPrefix(got, []byte(`{"id":"fb-0001"`)) {
		t.Errorf("RoundTrip() = %s, Request set %v, ContentLength %d, Content-Type %q, body %s; want 200 OK, the request, the body's length, JSON, fb-0001",
			resp.Status, resp.Request == req, resp.ContentLength, resp.Header.Get("Content-Type"), got)
	}
	if !body.closed {
		t.Errorf("RoundTrip() left the request body open")
	}
	if req.Header.Get("Content-Type") != "application/json" || len(req.Header) != 2 {
		t.Errorf("RoundTrip() changed the request's header")
	}

	resp, err = tr.RoundTrip(newReq(&fakeTestBody{Reader: strings.NewReader(`{}`)}))
	if err != nil {
		t.Fatalf("RoundTrip() error = %v", err)
	}
	if resp.StatusCode != 422 || resp.Status != "422 Unprocessable Entity" {
		t.Errorf("RoundTrip() of a bad body = %q; want 422 Unprocessable Entity", resp.Status)
	}

	// A handler that panics drops the request, as a net/http server does.
	s.setHook(func(w http.ResponseWriter, r *http.Request) bool { panic(http.ErrAbortHandler) })
	body = &fakeTestBody{Reader: strings.NewReader(fakeTestFeedback)}
	if resp, err := tr.RoundTrip(newReq(body)); err == nil || resp != nil || !body.closed {
		t.Errorf("RoundTrip() with a panicking handler: response %v, error %v, body closed %v; want no response, an error, the body closed", resp != nil, err, body.closed)
	}
	s.setHook(nil)

	// A context that already ended: nothing reaches the server.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	body = &fakeTestBody{Reader: strings.NewReader(fakeTestFeedback)}
	before := s.Requests("/api/feedback")
	if _, err := tr.RoundTrip(newReq(body).WithContext(ctx)); !errors.Is(err, context.Canceled) || !body.closed {
		t.Errorf("RoundTrip() with an ended context: error = %v, body closed %v; want context.Canceled, closed", err, body.closed)
	}
	if got := s.Requests("/api/feedback"); got != before {
		t.Errorf("Requests(feedback) = %d; want %d", got, before)
	}

	// A body larger than the server takes.
	big := `{"message_id":"` + strings.Repeat("x", 1<<20) + `","customer_responded":true,"score":"good"}`
	resp, err = tr.RoundTrip(newReq(&fakeTestBody{Reader: strings.NewReader(big)}))
	if err != nil {
		t.Fatalf("RoundTrip() of %d bytes: error %v", len(big), err)
	}
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("RoundTrip() of %d bytes: status %d; want 413", len(big), resp.StatusCode)
	}
}

// TestFakeServerOverSocket: mounted on httptest.NewServer, the fake serves
// a client built the ordinary way.
func TestFakeServerOverSocket(t *testing.T) {
	s := NewFakeServer()
	srv := httptest.NewServer(s)
	defer srv.Close()
	c, err := NewClient(FakeAPIKey, WithBaseURL(srv.URL), WithCompanyGUID(FakeCompanyGUID))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	res, err := c.OptimizeMessage(ctx, fakeTestRequest())
	if err != nil || res.MessageID != "msg-0001" {
		t.Fatalf("OptimizeMessage() = %v, %v; want msg-0001", res, err)
	}
	fb, err := c.SubmitFeedback(ctx, Feedback{MessageID: res.MessageID, CustomerResponded: true, Score: ScoreGood})
	if err != nil || fb.ID != "fb-0001" {
		t.Fatalf("SubmitFeedback() = %v, %v; want fb-0001", fb, err)
	}
	if got := s.Feedback(); len(got) != 1 || !reflect.DeepEqual(got[0], *fb) {
		t.Errorf("Feedback() = %+v; want [%+v]", got, *fb)
	}
	if got := string(s.lastBody("/api/feedback")); got != `{"message_id":"msg-0001","customer_responded":true,"score":"good"}` {
		t.Errorf("lastBody(feedback) = %s", got)
	}
	s.RevokeTokens()
	if _, err := c.SubmitFeedback(ctx, Feedback{MessageID: res.MessageID, Score: ScoreBad}); err != nil {
		t.Fatalf("SubmitFeedback() after RevokeTokens: %v", err)
	}
	if got := s.Requests("/api/auth/token"); got != 2 {
		t.Errorf("Requests(token) = %d; want 2", got)
	}
}

// TestFakeServerZeroValue: a FakeServer needs no constructor.
func TestFakeServerZeroValue(t *testing.T) {
	var s FakeServer
	if s.Requests("/api/feedback") != 0 || len(s.Feedback()) != 0 {
		t.Errorf("zero FakeServer: Requests %d, %d feedback entries; want 0, 0", s.Requests("/api/feedback"), len(s.Feedback()))
	}
	c := fakeTestClient(t, &s)
	if _, err := c.Authenticate(context.Background()); err != nil || lifetime(c.pair.Load()) != time.Hour {
		t.Fatalf("Authenticate() = lifetime %v, error %v; want 1h, nil", lifetime(c.pair.Load()), err)
	}
	if res, err := c.OptimizeMessage(context.Background(), fakeTestRequest()); err != nil || res.MessageID != "msg-0001" {
		t.Errorf("OptimizeMessage() = %v, %v; want msg-0001", res, err)
	}
}

// ---- Respond ----

// fakeTestAnswer is an answer as a test compares it.
type fakeTestAnswer struct {
	status int
	header http.Header
	body   string
}

// fakeTestRoundTrip sends one request to s through the in-memory transport,
// which answers through its own writer, not ServeHTTP's: header entries
// with an empty value are left out, as with fakeTestPost.
func fakeTestRoundTrip(t *testing.T, s *FakeServer, method, path, body string, header map[string]string) fakeTestAnswer {
	t.Helper()
	req, err := http.NewRequest(method, "http://apala.invalid"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := (&fakeTransport{s: s}).RoundTrip(req)
	if err != nil {
		t.Fatalf("RoundTrip() error = %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fakeTestAnswer{resp.StatusCode, resp.Header, string(b)}
}

func TestFakeServerRespond(t *testing.T) {
	const fb = "/api/feedback"
	tests := []struct {
		name   string
		resp   FakeResponse
		path   string            // fb when empty
		method string            // POST when empty
		header map[string]string // of the request: "" deletes; a valid bearer token is added unless deleted
		body   string            // of the request; fakeTestFeedback when empty
		want   fakeTestAnswer    // header: the headers the answer must have (others may come too)
	}{
		{name: "status, header and body", resp: FakeResponse{Status: 429, Header: http.Header{"Retry-After": {"7"}}, Body: `{"error":"slow down"}`},
			want: fakeTestAnswer{429, http.Header{"Retry-After": {"7"}, "Content-Type": {fakeJSONType}, "X-Request-Id": {"req-0001"}}, `{"error":"slow down"}`}},
		{name: "empty body with an error status", resp: FakeResponse{Status: 503},
			want: fakeTestAnswer{503, http.Header{"Content-Type": {fakeJSONType}}, `{"error":"Service Unavailable"}`}},
		{name: "empty body with a status of no name", resp: FakeResponse{Status: 599},
			want: fakeTestAnswer{599, nil, `{"error":"status 599"}`}},
		{name: "empty body with 400", resp: FakeResponse{Status: 400},
			want: fakeTestAnswer{400, nil, `{"error":"Bad Request"}`}},
		{name: "empty body with 399", resp: FakeResponse{Status: 399},
			want: fakeTestAnswer{399, nil, ``}},
		{name: "empty body with a success", resp: FakeResponse{Status: 204},
			want: fakeTestAnswer{204, http.Header{"Content-Type": {fakeJSONType}}, ``}},
		{name: "a body not JSON is sent as is", resp: FakeResponse{Status: 502, Body: "<html>Bad gateway</html>"},
			want: fakeTestAnswer{502, http.Header{"Content-Type": {fakeJSONType}}, "<html>Bad gateway</html>"}},
		{name: "Content-Type from Header", resp: FakeResponse{Status: 200, Header: http.Header{"Content-Type": {"text/plain"}}, Body: "plain"},
			want: fakeTestAnswer{200, http.Header{"Content-Type": {"text/plain"}}, "plain"}},
		{name: "header names in lower case", resp: FakeResponse{Status: 503, Header: http.Header{"retry-after": {"3"}, "content-type": {"text/html"}}},
			want: fakeTestAnswer{503, http.Header{"Retry-After": {"3"}, "Content-Type": {"text/html"}}, `{"error":"Service Unavailable"}`}},
		{name: "several values", resp: FakeResponse{Status: 200, Header: http.Header{"Vary": {"Accept", "Origin"}}, Body: "{}"},
			want: fakeTestAnswer{200, http.Header{"Vary": {"Accept", "Origin"}}, "{}"}},
		{name: "X-Request-Id replaced", resp: FakeResponse{Status: 500, Header: http.Header{"X-Request-Id": {"gw-1"}}},
			want: fakeTestAnswer{500, http.Header{"X-Request-Id": {"gw-1"}}, `{"error":"Internal Server Error"}`}},
		{name: "status out of range", resp: FakeResponse{Status: 42},
			want: fakeTestAnswer{500, nil, `{"error":"Internal Server Error"}`}},
		{name: "negative status", resp: FakeResponse{Status: -1, Body: `{}`},
			want: fakeTestAnswer{500, nil, `{}`}},
		{name: "before authentication", resp: FakeResponse{Status: 200, Body: `{"ok":true}`}, header: map[string]string{"Authorization": ""},
			want: fakeTestAnswer{200, nil, `{"ok":true}`}},
		{name: "before every check", resp: FakeResponse{Status: 418}, method: "GET", path: "/nowhere", body: "not JSON",
			want: fakeTestAnswer{418, nil, `{"error":"I'm a teapot"}`}},
		{name: "token endpoint", resp: FakeResponse{Status: 403}, path: pathToken, body: `{"api_key":"` + FakeAPIKey + `"}`, header: map[string]string{"Authorization": ""},
			want: fakeTestAnswer{403, nil, `{"error":"Forbidden"}`}},

		{name: "status 0: the normal answer, headers added", resp: FakeResponse{Header: http.Header{"X-Trace": {"t1"}}},
			want: fakeTestAnswer{200, http.Header{"X-Trace": {"t1"}, "X-Request-Id": {"req-0001"}, "Content-Type": {fakeJSONType}}, `{"id":"fb-0001","message_id":"msg-0001","customer_responded":true,"score":"good","actual_sent_message":null,"positive_rewards":[],"send_timestamp":null,"reply_timestamp":null,"inserted_at":"2025-01-15T10:00:00"}`}},
		{name: "status 0 with X-Request-Id", resp: FakeResponse{Header: http.Header{"X-Request-Id": {"gw-2"}}},
			want: fakeTestAnswer{200, http.Header{"X-Request-Id": {"gw-2"}}, `{"id":"fb-0001","message_id":"msg-0001","customer_responded":true,"score":"good","actual_sent_message":null,"positive_rewards":[],"send_timestamp":null,"reply_timestamp":null,"inserted_at":"2025-01-15T10:00:00"}`}},
		{name: "status 0 keeps the checks", resp: FakeResponse{Header: http.Header{"X-Trace": {"t2"}}}, header: map[string]string{"Authorization": ""},
			want: fakeTestAnswer{401, http.Header{"X-Trace": {"t2"}, "Content-Type": {fakeJSONType}}, `{"errors":{"detail":"Unauthorized"}}`}},
		{name: "status 0 with Allow", resp: FakeResponse{Header: http.Header{"Allow": {"POST, PUT"}}}, method: "GET",
			want: fakeTestAnswer{405, http.Header{"Allow": {"POST, PUT"}}, `{"error":"method GET not allowed: use POST"}`}},
		{name: "status 0 with a short delay", resp: FakeResponse{Delay: time.Millisecond},
			want: fakeTestAnswer{200, http.Header{"X-Request-Id": {"req-0001"}}, `{"id":"fb-0001","message_id":"msg-0001","customer_responded":true,"score":"good","actual_sent_message":null,"positive_rewards":[],"send_timestamp":null,"reply_timestamp":null,"inserted_at":"2025-01-15T10:00:00"}`}},
		{name: "error after a short delay", resp: FakeResponse{Status: 503, Delay: time.Millisecond},
			want: fakeTestAnswer{503, nil, `{"error":"Service Unavailable"}`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, how := range []string{"ServeHTTP", "in memory"} {
				s := NewFakeServer()
				access, _ := s.grant()
				path, method, body := tt.path, tt.method, tt.body
				if path == "" {
					path = fb
				}
				if method == "" {
					method = "POST"
				}
				if body == "" {
					body = fakeTestFeedback
				}
				header := map[string]string{"Authorization": "Bearer " + access}
				for k, v := range tt.header {
					header[k] = v
				}
				s.Respond(path, 1, tt.resp)
				var got fakeTestAnswer
				if how == "ServeHTTP" {
					w := fakeTestPost(s, method, path, body, header)
					got = fakeTestAnswer{w.Code, w.Header(), w.Body.String()}
				} else {
					got = fakeTestRoundTrip(t, s, method, path, body, header)
				}
				if got.status != tt.want.status || got.body != tt.want.body {
					t.Errorf("%s: answer = %d %s; want %d %s", how, got.status, fakeTestShow(got.body), tt.want.status, tt.want.body)
				}
				for k, v := range tt.want.header {
					if !reflect.DeepEqual(got.header[k], v) {
						t.Errorf("%s: header %s = %q; want %q", how, k, got.header[k], v)
					}
				}
				if got.header.Get("X-Request-Id") == "" {
					t.Errorf("%s: no X-Request-Id", how)
				}
				// Used once: the next request gets the normal answer.
				if w := fakeTestPost(s, method, path, body, header); w.Code == tt.want.status && w.Body.String() == tt.want.body && tt.resp.Status != 0 {
					t.Errorf("%s: the scripted answer was given twice", how)
				}
			}
		})
	}
}

// TestFakeServerRespondQueue: answers queued for a path come in order, each
// for its number of requests, then the normal answer; times <= 0 clears.
func TestFakeServerRespondQueue(t *testing.T) {
	const fb = "/api/feedback"
	statuses := func(s *FakeServer, path string, n int) []int {
		t.Helper()
		access, _ := s.grant()
		var got []int
		for i := 0; i < n; i++ {
			got = append(got, fakeTestPost(s, "POST", path, fakeTestFeedback, map[string]string{"Authorization": "Bearer " + access}).Code)
		}
		return got
	}
	tests := []struct {
		name  string
		setup func(s *FakeServer)
		want  []int // statuses of the requests to fb that follow
	}{
		{"times", func(s *FakeServer) { s.Respond(fb, 3, FakeResponse{Status: 503}) }, []int{503, 503, 503, 200}},
		{"queued after earlier ones", func(s *FakeServer) {
			s.Respond(fb, 2, FakeResponse{Status: 503})
			s.Respond(fb, 1, FakeResponse{Status: 429})
			s.Fail(fb, 500, "boom")
			s.Respond(fb, 1, FakeResponse{Header: http.Header{"X-Trace": {"t"}}})
			s.Respond(fb, 1, FakeResponse{Status: 502})
		}, []int{503, 503, 429, 500, 200, 502, 200}},
		{"times 0 clears", func(s *FakeServer) {
			s.Respond(fb, 5, FakeResponse{Status: 503})
			s.Fail(fb, 500, "boom")
			s.Respond(fb, 0, FakeResponse{Status: 418})
		}, []int{200, 200}},
		{"negative times clears", func(s *FakeServer) {
			s.Respond(fb, 2, FakeResponse{Status: 503})
			s.Respond(fb, -1, FakeResponse{})
			s.Respond(fb, 1, FakeResponse{Status: 429})
		}, []int{429, 200}},
		{"per path", func(s *FakeServer) {
			s.Respond("/api/feedback/bulk", 2, FakeResponse{Status: 503})
			s.Respond(fb+"/", 2, FakeResponse{Status: 503})
			s.Respond(fb, 0, FakeResponse{}) // clears fb's alone
		}, []int{200}},
		{"many times, little memory", func(s *FakeServer) { s.Respond(fb, 1<<40, FakeResponse{Status: 503}) }, []int{503, 503, 503}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewFakeServer()
			tt.setup(s)
			if got := statuses(s, fb, len(tt.want)); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("statuses = %v; want %v", got, tt.want)
			}
		})
	}

	// The header given to Respond is copied: changing it afterwards
	// changes nothing.
	s := NewFakeServer()
	h := http.Header{"Retry-After": {"1"}}
	s.Respond(fb, 1, FakeResponse{Status: 503, Header: h})
	h.Set("Retry-After", "99")
	h["Retry-After"][0] = "98"
	if w := fakeTestPost(s, "POST", fb, fakeTestFeedback, nil); w.Header().Get("Retry-After") != "1" {
		t.Errorf("Retry-After = %q; want the 1 given to Respond", w.Header().Get("Retry-After"))
	}
}

// TestFakeServerRespondRetryAfter: a client reads the Retry-After of a
// scripted answer.
func TestFakeServerRespondRetryAfter(t *testing.T) {
	s := NewFakeServer()
	c := fakeTestClient(t, s, WithMaxRetries(0))
	s.Respond("/api/feedback", 1, FakeResponse{Status: 503, Header: http.Header{"Retry-After": {"1"}}})
	_, err := c.SubmitFeedback(context.Background(), Feedback{MessageID: "m", Score: ScoreGood})
	var ae *APIError
	if !errors.As(err, &ae) || !errors.Is(err, ErrServer) {
		t.Fatalf("SubmitFeedback() error = %v; want an *APIError matching ErrServer", err)
	}
	if ae.StatusCode != 503 || ae.RetryAfter != time.Second || ae.Message != "Service Unavailable" || ae.RequestID != "req-0002" {
		t.Errorf("APIError = status %d, RetryAfter %v, Message %q, RequestID %q; want 503, 1s, Service Unavailable, req-0002",
			ae.StatusCode, ae.RetryAfter, ae.Message, ae.RequestID)
	}
	if n := s.Requests("/api/feedback"); n != 1 {
		t.Errorf("Requests(feedback) = %d; want 1 (no retry)", n)
	}

	// An HTTP date is read against the server's clock.
	s.Advance(time.Hour)
	s.Respond("/api/feedback", 1, FakeResponse{Status: 429, Header: http.Header{"Retry-After": {s.Now().Add(5 * time.Second).Format(http.TimeFormat)}}})
	_, err = c.SubmitFeedback(context.Background(), Feedback{MessageID: "m", Score: ScoreGood})
	if !errors.As(err, &ae) || ae.StatusCode != 429 || ae.RetryAfter != 5*time.Second {
		t.Errorf("SubmitFeedback() error = %v; want a 429 with RetryAfter 5s", err)
	}
}

// fakeTestWait fails the test unless ch yields within the bound: a guard
// against a hung test, not a timing assertion.
func fakeTestWait[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: still waiting after 30s", what)
		panic("unreachable")
	}
}

// fakeTestArrived waits until s has received n requests on path, within a
// bound.
func fakeTestArrived(t *testing.T, s *FakeServer, path string, n int) {
	t.Helper()
	for i := 0; s.Requests(path) < n; i++ {
		if i == 30000 {
			t.Fatalf("%d requests to %s after 30s; want %d", s.Requests(path), path, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFakeServerRespondDelayCanceled: a Delay ends when the request's
// context ends, in memory and over a socket, and the request gets no
// answer.
func TestFakeServerRespondDelayCanceled(t *testing.T) {
	for _, how := range []string{"in memory", "socket"} {
		t.Run(how, func(t *testing.T) {
			s := NewFakeServer()
			var c *Client
			var srv *httptest.Server
			if how == "socket" {
				srv = httptest.NewServer(s)
				// Close waits for the handlers: a hung one must fail
				// the test below, not hang its cleanup.
				t.Cleanup(func() { go srv.Close() })
				c = newTestClient(t, WithBaseURL(srv.URL), WithMaxRetries(0))
			} else {
				c = fakeTestClient(t, s, WithMaxRetries(0))
			}
			ctx := context.Background()
			if _, err := c.AccessToken(ctx); err != nil {
				t.Fatal(err)
			}
			// Status 0: the normal answer would follow the delay, and
			// store feedback; it never comes.
			s.Respond("/api/feedback", 1, FakeResponse{Delay: time.Hour})
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			result := make(chan error, 1)
			go func() {
				_, err := c.SubmitFeedback(cctx, Feedback{MessageID: "m", Score: ScoreGood})
				result <- err
			}()
			fakeTestArrived(t, s, "/api/feedback", 1)
			cancel()
			// In memory the handler runs on the caller's goroutine: the
			// call returning proves the delay ended.
			if err := fakeTestWait(t, "SubmitFeedback() after its context ended", result); !errors.Is(err, context.Canceled) {
				t.Errorf("SubmitFeedback() error = %v; want context.Canceled", err)
			}
			if srv != nil {
				// Close waits for the handlers: it returns only if the
				// delay ended with the request.
				closed := make(chan struct{})
				go func() { srv.Close(); close(closed) }()
				fakeTestWait(t, "the handler after its request's context ended", closed)
			}
			if n := len(s.Feedback()); n != 0 {
				t.Errorf("len(Feedback()) = %d; want 0: a request given up gets no answer", n)
			}
		})
	}
}

// ---- Received ----

func TestFakeServerReceived(t *testing.T) {
	s := NewFakeServer()
	c := fakeTestClient(t, s)
	ctx := context.Background()
	if _, err := c.OptimizeMessage(ctx, fakeTestRequest()); err != nil {
		t.Fatal(err)
	}
	s.Advance(90 * time.Second)
	access, _ := s.grant()
	refused := fakeTestPost(s, "POST", "/api/feedback?debug=1", `{"bad":1}`, map[string]string{"Authorization": "Bearer " + access, "X-Test": "a"})
	if refused.Code != 422 {
		t.Fatalf("bad feedback: status %d; want 422", refused.Code)
	}
	s.Fail("/api/feedback", 503, "down")
	if w := fakeTestPost(s, "GET", "/api/feedback", "", nil); w.Code != 503 {
		t.Fatalf("GET feedback: status %d; want the scripted 503", w.Code)
	}
	start := time.Date(2025, 1, 15, 10, 0, 0, 0, time.UTC)
	later := start.Add(90 * time.Second)

	// Every field, refused requests included.
	opt := s.Received("/api/message_optimizer")
	if len(opt) != 1 {
		t.Fatalf("len(Received(optimizer)) = %d; want 1", len(opt))
	}
	o := opt[0]
	var sent struct {
		CustomerID       string `json:"customer_id"`
		IsRepeatBorrower *int   `json:"is_repeat_borrower"`
	}
	if err := json.Unmarshal(o.Body, &sent); err != nil || sent.CustomerID != customerID || sent.IsRepeatBorrower == nil || *sent.IsRepeatBorrower != 1 {
		t.Errorf("optimizer body: customer_id %q, is_repeat_borrower %v (err %v); want %s, 1", sent.CustomerID, sent.IsRepeatBorrower, err, customerID)
	}
	if o.Method != "POST" || o.Path != "/api/message_optimizer" || !o.At.Equal(start) || o.At.Location() != time.UTC ||
		o.Header.Get("Content-Type") != "application/json" || len(o.Header.Get("Idempotency-Key")) != 32 || !strings.HasPrefix(o.Header.Get("Authorization"), "Bearer ") {
		t.Errorf("Received(optimizer)[0] = %s %s at %v, Content-Type %q, Idempotency-Key %q, bearer %v; want POST, the path, %v, JSON, 32 characters, a bearer",
			o.Method, o.Path, o.At, o.Header.Get("Content-Type"), o.Header.Get("Idempotency-Key"), strings.HasPrefix(o.Header.Get("Authorization"), "Bearer "), start)
	}
	fb := s.Received("/api/feedback")
	if len(fb) != 2 {
		t.Fatalf("len(Received(feedback)) = %d; want 2, refused ones included", len(fb))
	}
	if f := fb[0]; f.Method != "POST" || f.Path != "/api/feedback" || string(f.Body) != `{"bad":1}` || f.Header.Get("X-Test") != "a" || !f.At.Equal(later) {
		t.Errorf("Received(feedback)[0] = %s %s %s, X-Test %q, at %v; want POST /api/feedback (no query) {\"bad\":1}, a, %v", f.Method, f.Path, f.Body, f.Header.Get("X-Test"), f.At, later)
	}
	if f := fb[1]; f.Method != "GET" || len(f.Body) != 0 {
		t.Errorf("Received(feedback)[1] = %s with %d bytes; want the GET, empty", f.Method, len(f.Body))
	}
	if got := s.Received("/api/nothing"); len(got) != 0 {
		t.Errorf("Received(unknown path) = %d requests; want 0", len(got))
	}

	// "" merges every path, oldest first.
	var paths []string
	for _, r := range s.Received("") {
		paths = append(paths, r.Method+" "+r.Path)
	}
	if want := []string{"POST " + pathToken, "POST /api/message_optimizer", "POST /api/feedback", "GET /api/feedback"}; !reflect.DeepEqual(paths, want) {
		t.Errorf("Received(\"\") = %q; want %q", paths, want)
	}

	// A deep copy: changing what it returned changes nothing.
	fb[0].Body[1] = 'X'
	fb[0].Header.Set("X-Test", "changed")
	fb[0].Header["Content-Type"][0] = "changed"
	fb[0].Method, fb[0].At = "PUT", time.Time{}
	for _, r := range s.Received("") {
		if len(r.Body) > 2 {
			r.Body[2] = 'Y'
		}
		r.Header.Del("X-Test")
	}
	if again := s.Received("/api/feedback"); string(again[0].Body) != `{"bad":1}` || again[0].Header.Get("X-Test") != "a" ||
		again[0].Header.Get("Content-Type") != "application/json" || again[0].Method != "POST" || !again[0].At.Equal(later) {
		t.Errorf("Received() after changing its results = %s %s, X-Test %q, Content-Type %q; want the server's copy unchanged",
			again[0].Method, again[0].Body, again[0].Header.Get("X-Test"), again[0].Header.Get("Content-Type"))
	}

	// The zero value holds nothing.
	var zero FakeServer
	if got := zero.Received(""); len(got) != 0 {
		t.Errorf("zero FakeServer: Received(\"\") = %d requests; want 0", len(got))
	}
}

// TestFakeServerReceivedKeepsLast1000: exactly the last 1,000 requests of
// each path are kept, in order; Requests counts them all.
func TestFakeServerReceivedKeepsLast1000(t *testing.T) {
	s := NewFakeServer()
	for i := 1; i <= 2345; i++ {
		path := "/a"
		if i%3 == 0 {
			path = "/b"
		}
		s.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", path, strings.NewReader(strconv.Itoa(i))))
	}
	// /b got every third request (781 of them), /a the rest (1,564).
	bodies := func(rs []FakeRequest) []int {
		var out []int
		for _, r := range rs {
			n, err := strconv.Atoi(string(r.Body))
			if err != nil {
				t.Fatalf("body %q is not a number", r.Body)
			}
			out = append(out, n)
		}
		return out
	}
	var wantA, wantB, wantAll []int
	for i := 1; i <= 2345; i++ {
		if i%3 == 0 {
			wantB = append(wantB, i)
		} else {
			wantA = append(wantA, i)
		}
	}
	if got, want := s.Requests("/a")+s.Requests("/b"), 2345; got != want || s.Requests("/b") != len(wantB) {
		t.Errorf("Requests = %d in all, %d of /b; want %d, %d", got, s.Requests("/b"), want, len(wantB))
	}
	wantA = wantA[len(wantA)-1000:] // 1,564 sent: the last 1,000 kept
	for i := 1; i <= 2345; i++ {
		if i%3 == 0 || i >= wantA[0] {
			wantAll = append(wantAll, i)
		}
	}
	if got := bodies(s.Received("/a")); !reflect.DeepEqual(got, wantA) {
		t.Errorf("Received(/a) = %d requests, %v...; want the last 1,000 of 1,564, from %d", len(got), got[:3], wantA[0])
	}
	if got := bodies(s.Received("/b")); !reflect.DeepEqual(got, wantB) {
		t.Errorf("Received(/b) = %d requests; want all %d", len(got), len(wantB))
	}
	if got := bodies(s.Received("")); !reflect.DeepEqual(got, wantAll) {
		t.Errorf("Received(\"\") = %d requests; want the %d kept, merged in order", len(got), len(wantAll))
	}
	// One more to /a drops its oldest.
	s.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/a", strings.NewReader("9999")))
	if got := bodies(s.Received("/a")); len(got) != 1000 || got[0] != wantA[1] || got[999] != 9999 {
		t.Errorf("Received(/a) after one more = %d requests from %d to %d; want 1,000 from %d to 9999", len(got), got[0], got[len(got)-1], wantA[1])
	}
}

// ---- the clock ----

func TestFakeServerClock(t *testing.T) {
	start := time.Date(2025, 1, 15, 10, 0, 0, 0, time.UTC)
	var zero FakeServer
	if got := zero.Now(); got != start {
		t.Errorf("zero FakeServer: Now() = %v; want %v", got, start)
	}
	s := NewFakeServer()
	steps := []struct {
		advance time.Duration
		want    time.Time
	}{
		{0, start},
		{-time.Hour, start},
		{time.Nanosecond, start.Add(time.Nanosecond)},
		{90*time.Minute - time.Nanosecond, start.Add(90 * time.Minute)},
		{0, start.Add(90 * time.Minute)},
		{-time.Nanosecond, start.Add(90 * time.Minute)},
		{48 * time.Hour, start.Add(90*time.Minute + 48*time.Hour)},
	}
	for i, st := range steps {
		s.Advance(st.advance)
		if got := s.Now(); got != st.want {
			t.Errorf("step %d: after Advance(%v), Now() = %v; want %v", i, st.advance, got, st.want)
		}
	}
	zero.Advance(time.Minute) // a zero value moves too, maps unmade
	if got := zero.Now(); got != start.Add(time.Minute) {
		t.Errorf("zero FakeServer after Advance(1m): Now() = %v; want %v", got, start.Add(time.Minute))
	}
	// The clock never goes back, however far it is moved.
	before := s.Now()
	s.Advance(time.Duration(1<<63 - 1))
	far := s.Now()
	s.Advance(time.Hour)
	if !far.After(before) || s.Now().Before(far) {
		t.Errorf("Now() moved back: %v, then %v, then %v", before, far, s.Now())
	}
}

// TestFakeServerTimes: the times in answers come from the server's clock:
// the tokens' iat and exp, and inserted_at as Python's isoformat writes
// it, to the microsecond, six digits when not all zero, none when they are.
func TestFakeServerTimes(t *testing.T) {
	s := NewFakeServer()
	tests := []struct {
		advance time.Duration
		want    string
	}{
		{0, "2025-01-15T10:00:00"},
		{999, "2025-01-15T10:00:00"}, // under a microsecond: truncated to none
		{time.Microsecond, "2025-01-15T10:00:00.000001"},
		{120 * time.Millisecond, "2025-01-15T10:00:00.120001"},
		{time.Second - 120*time.Millisecond - time.Microsecond - 999, "2025-01-15T10:00:01"},
		{time.Hour + 123456789, "2025-01-15T11:00:01.123456"},
	}
	for _, tt := range tests {
		s.Advance(tt.advance)
		access, _ := s.grant()
		w := fakeTestPost(s, "POST", "/api/feedback", fakeTestFeedback, map[string]string{"Authorization": "Bearer " + access})
		var out struct {
			InsertedAt string `json:"inserted_at"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil || out.InsertedAt != tt.want {
			t.Errorf("at %v: inserted_at = %q (err %v); want %q", s.Now(), out.InsertedAt, err, tt.want)
		}
	}
	if got, want := fakeISO(time.Date(2025, 1, 15, 10, 30, 0, 120000000, time.FixedZone("EST", -5*3600))), "2025-01-15T15:30:00.120000"; got != want {
		t.Errorf("fakeISO(10:30:00.12 EST) = %q; want %q (in UTC)", got, want)
	}

	// Token claims: iat and exp by the server's clock.
	w := fakeTestPost(s, "POST", pathToken, `{"api_key":"`+FakeAPIKey+`"}`, nil)
	var ar struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &ar); err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.RawURLEncoding.DecodeString(strings.Split(ar.AccessToken, ".")[1])
	var claims struct{ Iat, Exp int64 }
	if err := json.Unmarshal(raw, &claims); err != nil || claims.Iat != s.Now().Unix() || claims.Exp != s.Now().Add(time.Hour).Unix() {
		t.Errorf("claims iat %d, exp %d (err %v); want %d, %d", claims.Iat, claims.Exp, err, s.Now().Unix(), s.Now().Add(time.Hour).Unix())
	}
}

// TestFakeServerAdvanceClient: a client made by NewClient judges its token
// by the server's clock: nothing before the margin, a refresh in the
// background inside it, a refresh before the call past the leeway; never a
// 401, never a sleep.
func TestFakeServerAdvanceClient(t *testing.T) {
	s := NewFakeServer()
	s.SetTokenLifetime(time.Minute) // margin 30s (half the lifetime), leeway 7.5s
	c := fakeTestClient(t, s)
	ctx := context.Background()
	call := func() string {
		t.Helper()
		if _, err := c.SubmitFeedback(ctx, Feedback{MessageID: "m", Score: ScoreGood}); err != nil {
			t.Fatalf("SubmitFeedback() error = %v", err)
		}
		fb := s.Received("/api/feedback")
		return fb[len(fb)-1].Header.Get("Authorization")
	}
	first := call()
	if got, want := c.Token().ExpiresAt, s.Now().Add(time.Minute); !got.Equal(want) {
		t.Errorf("ExpiresAt = %v; want the server's clock + 1m, %v", got, want)
	}

	s.Advance(29 * time.Second) // fresh
	if got := call(); got != first || s.Requests(pathRefresh) != 0 {
		t.Errorf("29s in: another token, or %d refreshes; want the same token, none", s.Requests(pathRefresh))
	}

	s.Advance(11 * time.Second) // 40s: stale, the same token and a refresh behind it
	if got := call(); got != first {
		t.Errorf("40s in: the call went with another token; want the held one")
	}
	waitIdle(t, c)
	if n := s.Requests(pathRefresh); n != 1 {
		t.Errorf("40s in: refreshes = %d; want 1, in the background", n)
	}
	second := c.Token()
	if second.AccessToken == "" || "Bearer "+second.AccessToken == first || !second.ExpiresAt.Equal(s.Now().Add(time.Minute)) {
		t.Errorf("after the background refresh: ExpiresAt = %v; want a new token expiring at %v", second.ExpiresAt, s.Now().Add(time.Minute))
	}

	s.Advance(2 * time.Minute) // expired: the refresh comes first
	before := len(s.Received(""))
	third := call()
	var order []string
	for _, r := range s.Received("")[before:] {
		order = append(order, r.Path)
	}
	if want := []string{pathRefresh, "/api/feedback"}; !reflect.DeepEqual(order, want) {
		t.Errorf("after the lifetime: requests %q; want %q (a refresh first, no 401)", order, want)
	}
	if third == "Bearer "+second.AccessToken || !c.Token().ExpiresAt.Equal(s.Now().Add(time.Minute)) {
		t.Errorf("after the lifetime: the call went with the expired token, or ExpiresAt = %v; want %v", c.Token().ExpiresAt, s.Now().Add(time.Minute))
	}
	if got, want := s.Requests("/api/feedback"), 4; got != want {
		t.Errorf("Requests(feedback) = %d; want %d: no 401, no replay", got, want)
	}
	if n := s.Requests(pathToken); n != 1 {
		t.Errorf("token exchanges = %d; want 1", n)
	}
}

// TestFakeServerAdvanceSocket: a client over a socket judges its token by
// real time: after an Advance past the lifetime the server refuses the
// token with 401, and the client refreshes and replays by itself.
func TestFakeServerAdvanceSocket(t *testing.T) {
	s := NewFakeServer()
	srv := httptest.NewServer(s)
	defer srv.Close()
	s.SetTokenLifetime(time.Minute)
	c := newTestClient(t, WithBaseURL(srv.URL))
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if _, err := c.OptimizeMessage(ctx, fakeTestRequest()); err != nil {
			t.Fatalf("OptimizeMessage() #%d error = %v", i, err)
		}
		s.Advance(time.Minute)
	}
	// Token, call; 401, refresh, replay.
	var paths []string
	for _, r := range s.Received("") {
		paths = append(paths, r.Path)
	}
	if want := []string{pathToken, pathOptimize, pathOptimize, pathRefresh, pathOptimize}; !reflect.DeepEqual(paths, want) {
		t.Errorf("requests = %q; want %q", paths, want)
	}
}

// ---- RotateRefreshTokens ----

func TestFakeServerRotateRefreshTokens(t *testing.T) {
	s := NewFakeServer()
	c := fakeTestClient(t, s)
	ctx := context.Background()
	_, err := c.Authenticate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	refreshed := func() string { // the refresh token the last refresh was made with
		t.Helper()
		r := s.Received(pathRefresh)
		var in struct {
			RefreshToken string `json:"refresh_token"`
		}
		if err := json.Unmarshal(r[len(r)-1].Body, &in); err != nil {
			t.Fatal(err)
		}
		return in.RefreshToken
	}
	post := func(refresh string) (int, bool) {
		w := fakeTestPost(s, "POST", pathRefresh, `{"refresh_token":"`+refresh+`"}`, nil)
		var out map[string]any
		_ = json.Unmarshal(w.Body.Bytes(), &out)
		_, rotated := out["refresh_token"]
		return w.Code, rotated
	}

	issued := c.pair.Load().refresh
	s.RotateRefreshTokens(true)
	if _, err := c.RefreshAccessToken(ctx); err != nil {
		t.Fatalf("RefreshAccessToken() error = %v", err)
	}
	if refreshed() != issued {
		t.Fatalf("the first refresh was not made with the refresh token issued")
	}
	if code, _ := post(issued); code != 401 {
		t.Errorf("the rotated-out refresh token: status %d; want 401 at once", code)
	}
	// The client follows: its next refresh uses the new token, which works.
	if _, err := c.RefreshAccessToken(ctx); err != nil {
		t.Fatalf("second RefreshAccessToken() error = %v", err)
	}
	second := refreshed()
	if second == issued || second == "" {
		t.Errorf("the second refresh was made with the old refresh token; want the rotated one")
	}
	if code, _ := post(second); code != 401 {
		t.Errorf("the refresh token used by the second refresh: status %d; want 401", code)
	}
	if n := s.Requests(pathToken); n != 1 {
		t.Errorf("token exchanges = %d; want 1: no refresh was refused", n)
	}

	// Off again: a refresh keeps its token and answers none.
	s.RotateRefreshTokens(false)
	if _, err := c.RefreshAccessToken(ctx); err != nil {
		t.Fatal(err)
	}
	kept := refreshed()
	for i := 0; i < 2; i++ {
		if code, rotated := post(kept); code != 200 || rotated {
			t.Errorf("refresh #%d without rotation: status %d, refresh_token in the answer %v; want 200, none", i, code, rotated)
		}
	}
}

// ---- memory ----

// TestFakeServerMemoryFlat: the server forgets tokens once its clock says
// they expired; over 2,000 token lifetimes its heap stays where it was
// after 10.
func TestFakeServerMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("memory test: runs without -short")
	}
	s := NewFakeServer()
	s.RotateRefreshTokens(true) // each refresh also issues a refresh token
	ctx := context.Background()
	clients := make([]*Client, 4)
	for i := range clients {
		clients[i] = fakeTestClient(t, s)
	}
	// Fill what Received keeps (the last 1,000 requests of each path)
	// first, so that the heap measures the tokens.
	for i := 0; i < 1000/len(clients)+1; i++ {
		for _, c := range clients {
			if _, err := c.AccessToken(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := c.RefreshAccessToken(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	lifetimes := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			s.Advance(time.Hour) // every client's token expires: each refreshes
			for _, c := range clients {
				if _, err := c.AccessToken(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	tokens := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.tokens)
	}
	lifetimes(10)
	after10, tokens10 := heap(), tokens()
	lifetimes(1990)
	after2000, tokens2000 := heap(), tokens()
	t.Logf("heap after 10 lifetimes %d B, after 2,000 %d B; tokens held %d, then %d", after10, after2000, tokens10, tokens2000)
	if after2000 > after10+1<<20 {
		t.Errorf("heap after 2,000 token lifetimes = %d B; want within 1 MiB of the %d B after 10", after2000, after10)
	}
	// Each client holds one access token and one refresh token.
	if max := 2 * len(clients); tokens10 > max || tokens2000 > max {
		t.Errorf("tokens held = %d after 10 lifetimes, %d after 2,000; want at most %d", tokens10, tokens2000, max)
	}
	if n := s.Requests(pathRefresh); n < 2000*len(clients) {
		t.Errorf("refreshes = %d; want at least %d, one per client and lifetime", n, 2000*len(clients))
	}
}

// TestFakeServerForgetsExpired: a token leaves the server's memory when
// its lifetime ends by the server's clock, and one issued expired is never
// kept.
func TestFakeServerForgetsExpired(t *testing.T) {
	s := NewFakeServer()
	held := func() (access, refresh int) {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, tok := range s.tokens {
			if tok.refresh {
				refresh++
			} else {
				access++
			}
		}
		return access, refresh
	}
	steps := []struct {
		name            string
		do              func()
		access, refresh int
	}{
		{"two pairs", func() { s.grant(); s.grant() }, 2, 2},
		{"a minute-long pair", func() { s.SetTokenLifetime(time.Minute); s.grant() }, 3, 3},
		{"59s later", func() { s.Advance(59 * time.Second) }, 3, 3},
		{"a minute later", func() { s.Advance(time.Second) }, 2, 3},
		{"an hour later", func() { s.Advance(59 * time.Minute) }, 0, 3},
		{"expired at birth", func() { s.SetTokenLifetime(0); s.grant() }, 0, 4},
		{"a week later", func() { s.Advance(7 * 24 * time.Hour) }, 0, 0},
	}
	for _, st := range steps {
		st.do()
		if a, r := held(); a != st.access || r != st.refresh {
			t.Errorf("%s: %d access and %d refresh tokens held; want %d and %d", st.name, a, r, st.access, st.refresh)
		}
	}
}

// BenchmarkFakeServerOptimizeMessage measures OptimizeMessage against a
// FakeServer in memory: the client's work, the transport's, and the
// server's decoding, checking and answering.
func BenchmarkFakeServerOptimizeMessage(b *testing.B) {
	s := NewFakeServer()
	c := fakeTestClient(b, s)
	req := MessageRequest{CustomerID: customerID, Candidate: Message{Content: "Your payment is due on Friday."}}
	ctx := context.Background()
	if _, err := c.OptimizeMessage(ctx, req); err != nil { // authenticates
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.OptimizeMessage(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFakeServerIdempotencyAcrossRotation: a key answered before the
// server's memory of keys rotated to a new generation is still replayed;
// only keys two generations old are forgotten.
func TestFakeServerIdempotencyAcrossRotation(t *testing.T) {
	s := NewFakeServer()
	access, _ := s.grant()
	post := func(key string) string {
		w := fakeTestPost(s, "POST", "/api/feedback", fakeTestFeedback, map[string]string{"Authorization": "Bearer " + access, "Idempotency-Key": key})
		if w.Code != 200 {
			t.Fatalf("status %d", w.Code)
		}
		return w.Body.String()
	}
	first := post("first")
	for i := 0; i < 4096; i++ { // fills the newest generation: the next key rotates it
		post(fmt.Sprint("k", i))
	}
	if again := post("first"); again != first {
		t.Errorf("a key answered before the rotation was not replayed")
	}
	if n := len(s.Feedback()); n != 4097 {
		t.Errorf("stored %d entries; want 4,097 (the replay stores none)", n)
	}
}
