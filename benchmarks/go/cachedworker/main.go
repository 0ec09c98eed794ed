// Command cachedworker is the benchmark's compiled yardstick: token-worker's cache-hit job
// done in Go with nats.go, as a careful engineer would write it.
//
// It serves one queue subscription. For every request it parses the JSON body into a
// typed struct (encoding/json) and validates it as token-worker does (size limit;
// request_id optional, a string without control characters; client_id and client_secret
// required, non-blank strings of at most 4096 characters; scope a string or a list of
// strings; timestamp a string; skip_cache a boolean), derives the cache key as
// token-worker's cache does (token endpoint, client_id, a keyed BLAKE2b-256 digest of the
// secret under a random per-process key, the sorted scope set, the auth method), looks
// the token up in a map under a mutex, and answers the JSON reply token-worker sends on a
// hit (request_id, access_token, token_type, expires_in, scope, token_source, timestamp).
//
// A miss asks the IdP (client_secret_post) on the subscription's goroutine and caches
// the token until 30 s before it expires: the benchmark warms the cache first and
// measures hits only. There is no LRU bound, single flight, refresh-ahead, metrics,
// logging or drain timeout: this is the floor of the hot path's work, not a product.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"golang.org/x/crypto/blake2b"
)

const (
	maxPayload     = 64 * 1024 // token-worker's default MAX_PAYLOAD
	maxField       = 4096
	expiryMargin   = 30 * time.Second
	authMethod     = "client_secret_post"
	invalidRequest = "invalid_request"
)

type request struct {
	RequestID    *string         `json:"request_id"`
	ClientID     *string         `json:"client_id"`
	ClientSecret *string         `json:"client_secret"`
	Scope        json.RawMessage `json:"scope"`
	Timestamp    *string         `json:"timestamp"`
	SkipCache    *bool           `json:"skip_cache"`
}

type tokenReply struct {
	RequestID   string `json:"request_id"`
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope,omitempty"`
	TokenSource string `json:"token_source"`
	Timestamp   string `json:"timestamp"`
}

type errorReply struct {
	RequestID string `json:"request_id"`
	Error     string `json:"error"`
	ErrorCode string `json:"error_code"`
	Timestamp string `json:"timestamp"`
}

type cacheKey struct {
	tokenURL   string
	clientID   string
	secret     [blake2b.Size256]byte
	scopes     string // the sorted scope set, space-separated
	authMethod string
}

type entry struct {
	accessToken, tokenType, scope string
	expiresAt, serveUntil         time.Time
}

type worker struct {
	tokenURL     string
	defaultScope string
	digestKey    []byte
	http         *http.Client
	mu           sync.Mutex
	cache        map[cacheKey]entry
}

func now() string {
	return time.Now().UTC().Format("2006-01-02T15:04:05.000000Z")
}

// control reports a character token-worker refuses in logged fields: C0, DEL, C1, the
// Unicode line and paragraph separators and the bidi overrides and isolates.
func control(s string) bool {
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) || r == 0x2028 || r == 0x2029 ||
			(r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) {
			return true
		}
	}
	return false
}

func requiredText(value *string, name string, secret bool) (string, error) {
	switch {
	case value == nil:
		return "", fmt.Errorf("missing field %s", name)
	case strings.TrimSpace(*value) == "":
		return "", fmt.Errorf("field %s must not be empty", name)
	case utf8.RuneCountInString(*value) > maxField:
		return "", fmt.Errorf("field %s is longer than %d characters", name, maxField)
	case !secret && control(*value):
		return "", fmt.Errorf("field %s must not contain control characters", name)
	}
	return *value, nil
}

// parse decodes and validates one request; it returns the request id even when the
// request is refused, if a readable one was there.
func parse(data []byte) (id, clientID, secret, scope string, skip bool, err error) {
	if len(data) > maxPayload {
		return "", "", "", "", false, fmt.Errorf("request is %d bytes, the limit is %d",
			len(data), maxPayload)
	}
	var req request
	if err = json.Unmarshal(data, &req); err != nil {
		return "", "", "", "", false, errors.New("Invalid request format: not a JSON object")
	}
	if req.RequestID != nil {
		id = *req.RequestID
		if utf8.RuneCountInString(id) > maxField || control(id) {
			return "", "", "", "", false, errors.New("field request_id is not a valid id")
		}
	}
	if clientID, err = requiredText(req.ClientID, "client_id", false); err != nil {
		return id, "", "", "", false, err
	}
	if secret, err = requiredText(req.ClientSecret, "client_secret", true); err != nil {
		return id, "", "", "", false, err
	}
	if req.Timestamp != nil && utf8.RuneCountInString(*req.Timestamp) > maxField {
		return id, "", "", "", false, errors.New("field timestamp must be a string")
	}
	if req.SkipCache != nil {
		skip = *req.SkipCache
	}
	if scope, err = parseScope(req.Scope); err != nil {
		return id, "", "", "", false, err
	}
	return id, clientID, secret, scope, skip, nil
}

// parseScope: absent or null is "" (the default applies); a string or a list of strings,
// its words joined by single spaces.
func parseScope(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return "", nil
	}
	var text string
	if err := json.Unmarshal(raw, &text); err != nil {
		var list []string
		if err := json.Unmarshal(raw, &list); err != nil {
			return "", errors.New("field scope must be a string or a list of strings")
		}
		text = strings.Join(list, " ")
	}
	if utf8.RuneCountInString(text) > maxField || control(text) {
		return "", errors.New("field scope is not a valid scope string")
	}
	return strings.Join(strings.Fields(text), " "), nil
}

func scopeSet(scope string) string {
	words := strings.Fields(scope)
	sort.Strings(words)
	unique := words[:0]
	for i, w := range words {
		if i == 0 || w != words[i-1] {
			unique = append(unique, w)
		}
	}
	return strings.Join(unique, " ")
}

func (w *worker) key(clientID, secret, scope string) cacheKey {
	digest, err := blake2b.New256(w.digestKey)
	if err != nil {
		panic(err)
	}
	digest.Write([]byte(secret))
	k := cacheKey{tokenURL: w.tokenURL, clientID: clientID, scopes: scopeSet(scope),
		authMethod: authMethod}
	digest.Sum(k.secret[:0])
	return k
}

// fetch asks the IdP for a token (client_secret_post) and caches it.
func (w *worker) fetch(k cacheKey, clientID, secret, scope string) (entry, string, error) {
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID},
		"client_secret": {secret}}
	if scope != "" {
		form.Set("scope", scope)
	}
	asked := time.Now()
	response, err := w.http.PostForm(w.tokenURL, form)
	if err != nil {
		return entry{}, "idp_unavailable", err
	}
	defer response.Body.Close()
	var answer struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int64  `json:"expires_in"`
		Scope       string `json:"scope"`
		Error       string `json:"error"`
	}
	if err := json.NewDecoder(response.Body).Decode(&answer); err != nil {
		return entry{}, "idp_bad_response", err
	}
	if response.StatusCode != http.StatusOK || answer.AccessToken == "" {
		code := answer.Error
		if code == "" {
			code = "idp_bad_response"
		}
		return entry{}, code, fmt.Errorf("the IdP refused: HTTP %d", response.StatusCode)
	}
	expires := asked.Add(time.Duration(answer.ExpiresIn) * time.Second)
	if answer.Scope == "" {
		answer.Scope = scope // as token-worker: the IdP granted what was asked
	}
	e := entry{accessToken: answer.AccessToken, tokenType: answer.TokenType,
		scope: answer.Scope, expiresAt: expires, serveUntil: expires.Add(-expiryMargin)}
	if e.serveUntil.After(asked) {
		w.mu.Lock()
		w.cache[k] = e
		w.mu.Unlock()
	}
	return e, "", nil
}

func (w *worker) handle(m *nats.Msg) {
	id, clientID, secret, scope, skip, err := parse(m.Data)
	if err != nil {
		w.respond(m, errorReply{RequestID: id, Error: err.Error(), ErrorCode: invalidRequest,
			Timestamp: now()})
		return
	}
	if scope == "" {
		scope = w.defaultScope
	}
	k := w.key(clientID, secret, scope)
	source := "cache"
	w.mu.Lock()
	e, hit := w.cache[k]
	if hit && !time.Now().Before(e.serveUntil) {
		delete(w.cache, k)
		hit = false
	}
	w.mu.Unlock()
	if !hit || skip {
		var code string
		if e, code, err = w.fetch(k, clientID, secret, scope); err != nil {
			w.respond(m, errorReply{RequestID: id, Error: err.Error(), ErrorCode: code,
				Timestamp: now()})
			return
		}
		source = "idp"
	}
	left := int64(time.Until(e.expiresAt) / time.Second)
	if left < 0 {
		left = 0
	}
	w.respond(m, tokenReply{RequestID: id, AccessToken: e.accessToken, TokenType: e.tokenType,
		ExpiresIn: left, Scope: e.scope, TokenSource: source, Timestamp: now()})
}

func (w *worker) respond(m *nats.Msg, body interface{}) {
	data, err := json.Marshal(body)
	if err == nil {
		err = m.Respond(data)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cachedworker: reply not sent: %v\n", err)
	}
}

func main() {
	natsURL := flag.String("url", nats.DefaultURL, "NATS server")
	subject := flag.String("subject", "token.request", "subject to serve")
	queue := flag.String("queue", "token-workers", "queue group")
	tokenURL := flag.String("token-url", "", "the IdP's token endpoint")
	scope := flag.String("scope", "openid profile", "scope asked when a request names none")
	flag.Parse()
	if *tokenURL == "" {
		fmt.Fprintln(os.Stderr, "cachedworker: -token-url is required")
		os.Exit(2)
	}
	w := &worker{tokenURL: *tokenURL, defaultScope: *scope, digestKey: make([]byte, 32),
		http: &http.Client{Timeout: 10 * time.Second}, cache: map[cacheKey]entry{}}
	if _, err := rand.Read(w.digestKey); err != nil {
		panic(err)
	}
	closed := make(chan struct{})
	nc, err := nats.Connect(*natsURL, nats.Name("bench-go-cached-worker"),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		fmt.Fprintf(os.Stderr, "cachedworker: connect %s: %v\n", *natsURL, err)
		os.Exit(1)
	}
	if _, err := nc.QueueSubscribe(*subject, *queue, w.handle); err != nil {
		fmt.Fprintf(os.Stderr, "cachedworker: subscribe: %v\n", err)
		os.Exit(1)
	}
	if err := nc.Flush(); err != nil {
		fmt.Fprintf(os.Stderr, "cachedworker: flush: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("serving")
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	if err := nc.Drain(); err != nil {
		nc.Close()
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
	}
}
