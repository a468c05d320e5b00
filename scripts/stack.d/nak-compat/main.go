// nak-compat: a small stand-in for fiatjaf's `nak` (the Nostr army knife), built by scripts/stack.d/nostr.sh.
//
// Why: the Go module proxy reachable here refuses github.com/fiatjaf/nak (every version: 403 "not
// available"), so the real nak cannot be installed. This program implements the subset of nak's
// command line that the test stack uses, with nak's flag names and output shapes, on top of go-nostr
// (github.com/nbd-wtf/go-nostr, which the proxy does serve):
//
//	nak event [--sec HEX|nsec] [-k KIND] [-c CONTENT|@FILE] [-t name=v1;v2]... [-e ID]... [-p PUBKEY]...
//	          [-d ID] [--created-at TS|now] [--envelope] [RELAY...]
//	    signs an event, prints it as JSON on stdout, publishes it to each RELAY ("publishing to URL...
//	    success." on stderr). Like nak it also takes events/templates as JSON on stdin (one per line):
//	    a complete signed event is published as is (id and signature checked) unless a flag changes it
//	    or --sec is given (then it is re-signed). Unlike nak: NOSTR_SECRET_KEY alone never re-signs a
//	    signed stdin event; exits 1 if any relay did not accept it; stdin counts only if its first
//	    bytes come within 1 s (an idle inherited pipe must not hang scripts).
//	nak req [-k KIND]... [-a PUBKEY]... [-i ID]... [-t name=value]... [-e ID]... [-p PUBKEY]... [-d D]...
//	        [-s SINCE] [-u UNTIL] [-l LIMIT] [--search Q] [--stream] [--timeout SECONDS] [RELAY...]
//	    without relays prints the REQ message; with relays prints each matching event as one JSON line
//	    (deduplicated, flushed at once) and exits after EOSE from every relay (error if none within
//	    --timeout, default 30 s); --stream keeps the subscription open and prints events as they come,
//	    until --timeout (then exit 0) or forever.
//	nak encrypt --sec SEC -p RECIPIENT [PLAINTEXT]    (plaintext from stdin if not given; one trailing
//	    newline dropped) prints the NIP-44 v2 payload. -p aliases: --recipient-pubkey --to --tgt --target --pubkey
//	nak decrypt --sec SEC -p SENDER [PAYLOAD]         (payload from stdin if not given) prints the plaintext.
//	    -p aliases: --sender-pubkey --from --src --source --pubkey. (--nip04 is refused: NIP-44 only.)
//	nak gift wrap --sec SENDER -p RECIPIENT           < event JSON(s): prints one kind-1059 wrap per event
//	    (rumor = the event without sig, pubkey = sender, id recomputed; seal kind 13 signed by SENDER;
//	    wrap signed by a fresh random key, tag p=RECIPIENT; seal and wrap created_at up to 2 days ago).
//	nak gift unwrap --sec RECIPIENT [--from SENDER]   < kind-1059 JSON(s): prints each rumor. Exits 1
//	    (message on stderr) for a wrap/seal with a bad id or signature, a seal not of kind 13 or not by
//	    --from, or a rumor whose pubkey is not the seal's signer (real nak silently overwrites it).
//	PUBKEY/RECIPIENT/SENDER: hex, npub or nprofile; SEC: hex or nsec (default: NOSTR_SECRET_KEY, else key 1).
//	nak key generate | nak key public SEC
//	nak encode npub|nsec|note HEX | nak decode NIP19 | nak verify (event JSON on stdin)
//	nak --version
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nbd-wtf/go-nostr"
	"github.com/nbd-wtf/go-nostr/nip19"
	"github.com/nbd-wtf/go-nostr/nip44"
)

const version = "nak-compat 0.2.0 (paygress stand-in for nak, on go-nostr v0.38.2)"

// ---- argument parsing: flags and positionals may be interleaved, flags may repeat ----

type flagSpec struct {
	names  []string
	isBool bool
}

type parsed struct {
	vals  map[string][]string // canonical name -> values
	bools map[string]bool
	pos   []string
}

func parse(args []string, specs []flagSpec) (*parsed, error) {
	byName := map[string]*flagSpec{}
	for i := range specs {
		for _, n := range specs[i].names {
			byName[n] = &specs[i]
		}
	}
	p := &parsed{vals: map[string][]string{}, bools: map[string]bool{}}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			p.pos = append(p.pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			p.pos = append(p.pos, a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		val, hasVal := "", false
		if eq := strings.IndexByte(name, '='); eq >= 0 {
			name, val, hasVal = name[:eq], name[eq+1:], true
		}
		spec, ok := byName[name]
		if !ok {
			return nil, fmt.Errorf("unknown flag %s", a)
		}
		canon := spec.names[0]
		if spec.isBool {
			p.bools[canon] = !hasVal || (val != "false" && val != "0")
			continue
		}
		if !hasVal {
			if i+1 >= len(args) {
				return nil, fmt.Errorf("flag %s needs a value", a)
			}
			i++
			val = args[i]
		}
		p.vals[canon] = append(p.vals[canon], val)
	}
	return p, nil
}

func (p *parsed) last(name string) (string, bool) {
	v := p.vals[name]
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

func die(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "nak: "+format+"\n", a...)
	os.Exit(1)
}

// ---- helpers ----

func secretKey(p *parsed) string {
	sec, ok := p.last("sec")
	if !ok {
		sec = os.Getenv("NOSTR_SECRET_KEY")
	}
	if sec == "" {
		// nak's default: the well-known key 1
		sec = "0000000000000000000000000000000000000000000000000000000000000001"
	}
	if strings.HasPrefix(sec, "nsec1") {
		_, v, err := nip19.Decode(sec)
		if err != nil {
			die("invalid nsec: %v", err)
		}
		sec = v.(string)
	}
	sec = strings.ToLower(sec)
	if len(sec) < 64 {
		sec = strings.Repeat("0", 64-len(sec)) + sec
	}
	if _, err := nostr.GetPublicKey(sec); err != nil {
		die("invalid secret key: %v", err)
	}
	return sec
}

func hexOrBech(s string) string {
	if strings.HasPrefix(s, "npub1") || strings.HasPrefix(s, "note1") || strings.HasPrefix(s, "nsec1") {
		if _, v, err := nip19.Decode(s); err == nil {
			if str, ok := v.(string); ok {
				return str
			}
		}
	}
	if strings.HasPrefix(s, "nprofile1") {
		if _, v, err := nip19.Decode(s); err == nil {
			if pp, ok := v.(nostr.ProfilePointer); ok {
				return pp.PublicKey
			}
		}
	}
	if strings.HasPrefix(s, "nevent1") {
		if _, v, err := nip19.Decode(s); err == nil {
			if ep, ok := v.(nostr.EventPointer); ok {
				return ep.ID
			}
		}
	}
	return s
}

func parseTimestamp(s string) nostr.Timestamp {
	if s == "now" || s == "" {
		return nostr.Now()
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		die("invalid timestamp %q (unix seconds or 'now')", s)
	}
	return nostr.Timestamp(n)
}

func normalizeRelay(u string) string {
	if strings.HasPrefix(u, "ws://") || strings.HasPrefix(u, "wss://") {
		return u
	}
	if strings.HasPrefix(u, "localhost") || strings.HasPrefix(u, "127.") {
		return "ws://" + u
	}
	return "wss://" + u
}

// stdinData returns stdin when it is a file or a pipe. With wait > 0 a pipe counts as empty unless
// its first bytes (or its EOF) come within wait: `nak event` reads event templates from stdin like
// nak, but waiting forever on an inherited, idle pipe would hang scripts. Once the first bytes have
// come, it reads to EOF. With wait == 0 it blocks until EOF (commands whose input is stdin).
func stdinData(wait time.Duration) []byte {
	st, err := os.Stdin.Stat()
	if err != nil || st.Mode()&os.ModeCharDevice != 0 {
		return nil
	}
	if wait == 0 || st.Mode().IsRegular() {
		b, _ := io.ReadAll(os.Stdin)
		return b
	}
	first := make(chan []byte, 1)
	go func() {
		buf := make([]byte, 64*1024)
		n, _ := os.Stdin.Read(buf)
		first <- buf[:n]
	}()
	select {
	case b := <-first:
		if len(b) == 0 {
			return nil
		}
		rest, _ := io.ReadAll(os.Stdin)
		return append(b, rest...)
	case <-time.After(wait):
		return nil
	}
}

// stdinLines returns the non-blank lines of stdinData(wait).
func stdinLines(wait time.Duration) []string {
	var out []string
	for _, l := range strings.Split(string(stdinData(wait)), "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// stdinJSONs returns the JSON values on stdin (one per line or pretty-printed, back to back),
// blocking until EOF like nak; dies if stdin is a terminal or holds something that is not JSON.
func stdinJSONs(usage string) []json.RawMessage {
	if st, err := os.Stdin.Stat(); err != nil || st.Mode()&os.ModeCharDevice != 0 {
		die("%s (reads JSON on stdin)", usage)
	}
	dec := json.NewDecoder(strings.NewReader(string(stdinData(0))))
	var out []json.RawMessage
	for {
		var m json.RawMessage
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			die("invalid JSON on stdin: %v", err)
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		die("%s: nothing on stdin", usage)
	}
	return out
}

func connect(ctx context.Context, url string) (*nostr.Relay, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return nostr.RelayConnect(cctx, url)
}

// ---- commands ----

func cmdEvent(args []string) {
	p, err := parse(args, []flagSpec{
		{names: []string{"sec"}}, {names: []string{"kind", "k"}}, {names: []string{"content", "c"}},
		{names: []string{"tag", "t"}}, {names: []string{"e"}}, {names: []string{"p"}}, {names: []string{"d"}},
		{names: []string{"created-at", "time", "ts"}}, {names: []string{"envelope"}, isBool: true},
		{names: []string{"nevent"}, isBool: true}, {names: []string{"auth"}, isBool: true},
		{names: []string{"quiet", "q"}, isBool: true},
	})
	if err != nil {
		die("%v", err)
	}
	sec := secretKey(p)
	relays := make([]string, 0, len(p.pos))
	for _, r := range p.pos {
		relays = append(relays, normalizeRelay(r))
	}

	templates := stdinLines(time.Second)
	if len(templates) == 0 {
		templates = []string{""}
	}
	ctx := context.Background()
	conns := map[string]*nostr.Relay{}
	failed := false
	for _, tmpl := range templates {
		// Like nak: an event on stdin that is complete and signed is published as is, unless a flag
		// changes it (kind, content, tags, created-at) or --sec is given, which re-sign it.
		// (Unlike nak, NOSTR_SECRET_KEY alone does not re-sign it: piping a gift wrap into
		// `nak event RELAY` must never re-sign the wrap with one's own key.)
		ev := nostr.Event{Tags: nostr.Tags{}}
		resign := false
		kindGiven, contentGiven := false, false
		if tmpl != "" {
			if err := json.Unmarshal([]byte(tmpl), &ev); err != nil {
				die("invalid event JSON on stdin: %v", err)
			}
			kindGiven = strings.Contains(tmpl, `"kind"`)
			contentGiven = strings.Contains(tmpl, `"content"`)
			if ev.Tags == nil {
				ev.Tags = nostr.Tags{}
			}
		}
		if k, ok := p.last("kind"); ok {
			n, err := strconv.Atoi(k)
			if err != nil {
				die("invalid kind %q", k)
			}
			ev.Kind = n
			resign = true
		} else if !kindGiven {
			ev.Kind = 1
			resign = true
		}
		if c, ok := p.last("content"); ok {
			if strings.HasPrefix(c, "@") {
				b, err := os.ReadFile(c[1:])
				if err != nil {
					die("reading content file: %v", err)
				}
				c = string(b)
			}
			ev.Content = c
			resign = true
		} else if !contentGiven && ev.Content == "" && ev.Kind == 1 {
			ev.Content = "hello from the nostr army knife"
			resign = true
		}
		ntags := len(ev.Tags)
		for _, t := range p.vals["tag"] {
			name, rest, _ := strings.Cut(t, "=")
			tag := nostr.Tag{name}
			if rest != "" {
				tag = append(tag, strings.Split(rest, ";")...)
			}
			ev.Tags = append(ev.Tags, tag)
		}
		for _, e := range p.vals["e"] {
			ev.Tags = append(ev.Tags, nostr.Tag{"e", hexOrBech(e)})
		}
		for _, pk := range p.vals["p"] {
			ev.Tags = append(ev.Tags, nostr.Tag{"p", hexOrBech(pk)})
		}
		for _, d := range p.vals["d"] {
			ev.Tags = append(ev.Tags, nostr.Tag{"d", d})
		}
		if len(ev.Tags) != ntags {
			resign = true
		}
		if ts, ok := p.last("created-at"); ok {
			ev.CreatedAt = parseTimestamp(ts)
			resign = true
		} else if ev.CreatedAt == 0 {
			ev.CreatedAt = nostr.Now()
			resign = true
		}
		if _, ok := p.last("sec"); ok {
			resign = true
		}
		if ev.Sig == "" || resign {
			if err := ev.Sign(sec); err != nil {
				die("signing: %v", err)
			}
		} else {
			// a complete signed event: publish as is
			if ev.GetID() != ev.ID {
				die("event on stdin has a wrong id: expected %s, got %s", ev.GetID(), ev.ID)
			}
			if ok, _ := ev.CheckSignature(); !ok {
				die("event on stdin has an invalid signature")
			}
		}

		if p.bools["envelope"] {
			b, _ := json.Marshal([]any{"EVENT", ev})
			fmt.Println(string(b))
		} else {
			fmt.Println(ev.String())
		}

		for _, url := range relays {
			fmt.Fprintf(os.Stderr, "publishing to %s... ", url)
			r := conns[url]
			if r == nil {
				r, err = connect(ctx, url)
				if err != nil {
					fmt.Fprintf(os.Stderr, "failed: %v\n", err)
					failed = true
					continue
				}
				conns[url] = r
			}
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := r.Publish(pctx, ev)
			cancel()
			if err != nil {
				fmt.Fprintf(os.Stderr, "failed: %v\n", err)
				failed = true
			} else {
				fmt.Fprintf(os.Stderr, "success.\n")
			}
		}
	}
	for _, r := range conns {
		r.Close()
	}
	if failed {
		os.Exit(1)
	}
}

func cmdReq(args []string) {
	p, err := parse(args, []flagSpec{
		{names: []string{"kind", "k"}}, {names: []string{"author", "a"}}, {names: []string{"id", "i"}},
		{names: []string{"tag", "t"}}, {names: []string{"e"}}, {names: []string{"p"}}, {names: []string{"d"}},
		{names: []string{"since", "s"}}, {names: []string{"until", "u"}}, {names: []string{"limit", "l"}},
		{names: []string{"search"}}, {names: []string{"stream"}, isBool: true}, {names: []string{"bare"}, isBool: true},
		{names: []string{"timeout"}}, {names: []string{"sec"}}, {names: []string{"auth"}, isBool: true},
	})
	if err != nil {
		die("%v", err)
	}
	f := nostr.Filter{}
	for _, k := range p.vals["kind"] {
		n, err := strconv.Atoi(k)
		if err != nil {
			die("invalid kind %q", k)
		}
		f.Kinds = append(f.Kinds, n)
	}
	for _, a := range p.vals["author"] {
		f.Authors = append(f.Authors, hexOrBech(a))
	}
	for _, i := range p.vals["id"] {
		f.IDs = append(f.IDs, hexOrBech(i))
	}
	addTag := func(name, value string) {
		if f.Tags == nil {
			f.Tags = nostr.TagMap{}
		}
		f.Tags[name] = append(f.Tags[name], value)
	}
	for _, t := range p.vals["tag"] {
		name, value, _ := strings.Cut(t, "=")
		addTag(name, value)
	}
	for _, e := range p.vals["e"] {
		addTag("e", hexOrBech(e))
	}
	for _, pk := range p.vals["p"] {
		addTag("p", hexOrBech(pk))
	}
	for _, d := range p.vals["d"] {
		addTag("d", d)
	}
	if s, ok := p.last("since"); ok {
		ts := parseTimestamp(s)
		f.Since = &ts
	}
	if u, ok := p.last("until"); ok {
		ts := parseTimestamp(u)
		f.Until = &ts
	}
	if l, ok := p.last("limit"); ok {
		n, err := strconv.Atoi(l)
		if err != nil {
			die("invalid limit %q", l)
		}
		f.Limit = n
		f.LimitZero = n == 0
	}
	if s, ok := p.last("search"); ok {
		f.Search = s
	}

	if len(p.pos) == 0 {
		if p.bools["bare"] {
			fmt.Println(f.String())
		} else {
			b, _ := json.Marshal([]any{"REQ", "nak", f})
			fmt.Println(string(b))
		}
		return
	}

	timeout := 30 * time.Second
	if t, ok := p.last("timeout"); ok {
		secs, err := strconv.ParseFloat(t, 64)
		if err != nil {
			die("invalid timeout %q", t)
		}
		timeout = time.Duration(secs * float64(time.Second))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !p.bools["stream"] || p.vals["timeout"] != nil {
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}

	var mu sync.Mutex
	seen := map[string]bool{}
	out := bufio.NewWriter(os.Stdout)
	emit := func(ev *nostr.Event) {
		mu.Lock()
		defer mu.Unlock()
		if seen[ev.ID] {
			return
		}
		seen[ev.ID] = true
		fmt.Fprintln(out, ev.String())
		out.Flush()
	}

	var wg sync.WaitGroup
	errs := make(chan string, len(p.pos))
	for _, raw := range p.pos {
		url := normalizeRelay(raw)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := connect(ctx, url)
			if err != nil {
				errs <- fmt.Sprintf("%s: %v", url, err)
				return
			}
			defer r.Close()
			sub, err := r.Subscribe(ctx, nostr.Filters{f})
			if err != nil {
				errs <- fmt.Sprintf("%s: %v", url, err)
				return
			}
			defer sub.Unsub()
			for {
				select {
				case ev := <-sub.Events:
					if ev != nil {
						emit(ev)
					}
				case <-sub.EndOfStoredEvents:
					if !p.bools["stream"] {
						// drain what already arrived, then stop
						for {
							select {
							case ev := <-sub.Events:
								if ev != nil {
									emit(ev)
								}
							default:
								return
							}
						}
					}
				case reason := <-sub.ClosedReason:
					errs <- fmt.Sprintf("%s: subscription closed: %s", url, reason)
					return
				case <-ctx.Done():
					if !p.bools["stream"] {
						errs <- fmt.Sprintf("%s: no EOSE within %s", url, timeout)
					}
					return
				case <-r.Context().Done():
					errs <- fmt.Sprintf("%s: connection lost", url)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	failed := false
	for e := range errs {
		fmt.Fprintln(os.Stderr, "nak: "+e)
		failed = true
	}
	if failed {
		os.Exit(1)
	}
}

func cmdKey(args []string) {
	if len(args) == 0 {
		die("usage: nak key generate | nak key public SEC")
	}
	switch args[0] {
	case "generate":
		fmt.Println(nostr.GeneratePrivateKey())
	case "public":
		keys := args[1:]
		if len(keys) == 0 {
			keys = stdinLines(time.Second)
		}
		for _, k := range keys {
			k = strings.TrimSpace(hexOrBech(k))
			pk, err := nostr.GetPublicKey(k)
			if err != nil {
				die("invalid secret key: %v", err)
			}
			fmt.Println(pk)
		}
	default:
		die("unknown key subcommand %q", args[0])
	}
}

func cmdEncode(args []string) {
	if len(args) < 2 {
		die("usage: nak encode npub|nsec|note HEX")
	}
	var s string
	var err error
	switch args[0] {
	case "npub":
		s, err = nip19.EncodePublicKey(args[1])
	case "nsec":
		s, err = nip19.EncodePrivateKey(args[1])
	case "note":
		s, err = nip19.EncodeNote(args[1])
	default:
		die("unsupported encoding %q", args[0])
	}
	if err != nil {
		die("%v", err)
	}
	fmt.Println(s)
}

func cmdDecode(args []string) {
	if len(args) < 1 {
		die("usage: nak decode NIP19")
	}
	for _, a := range args {
		_, v, err := nip19.Decode(strings.TrimPrefix(a, "nostr:"))
		if err != nil {
			die("%v", err)
		}
		switch x := v.(type) {
		case string:
			fmt.Println(x)
		default:
			b, _ := json.Marshal(x)
			fmt.Println(string(b))
		}
	}
}

func cmdVerify() {
	for _, l := range stdinJSONs("usage: echo EVENT_JSON | nak verify") {
		var ev nostr.Event
		if err := json.Unmarshal(l, &ev); err != nil {
			die("invalid event JSON: %v", err)
		}
		if ev.GetID() != ev.ID {
			die("invalid id: expected %s, got %s", ev.GetID(), ev.ID)
		}
		if ok, err := ev.CheckSignature(); !ok {
			die("invalid signature: %v", err)
		}
	}
}

// ---- NIP-44 encryption, NIP-59 gift wraps ----

// pubKeyFlag returns the hex public key given to one of the flag's names (hex, npub or nprofile).
func pubKeyFlag(p *parsed, name, usage string) string {
	v, ok := p.last(name)
	if !ok {
		die("%s: missing -p (the other side's public key)", usage)
	}
	pk := strings.ToLower(hexOrBech(strings.TrimSpace(v)))
	if !nostr.IsValidPublicKey(pk) {
		die("invalid public key %q", v)
	}
	return pk
}

// argOrStdin returns the first positional argument, or else stdin (blocking until EOF) without
// one trailing newline, so that `echo TEXT | nak encrypt ...` encrypts TEXT.
func argOrStdin(p *parsed, usage string) string {
	if len(p.pos) > 0 {
		return p.pos[0]
	}
	if st, err := os.Stdin.Stat(); err != nil || st.Mode()&os.ModeCharDevice != 0 {
		die("%s", usage)
	}
	s := string(stdinData(0))
	s = strings.TrimSuffix(s, "\n")
	return strings.TrimSuffix(s, "\r")
}

func conversationKey(pub, sec string) [32]byte {
	ck, err := nip44.GenerateConversationKey(pub, sec)
	if err != nil {
		die("computing the NIP-44 conversation key: %v", err)
	}
	return ck
}

var encryptFlags = []flagSpec{
	{names: []string{"sec"}}, {names: []string{"recipient-pubkey", "p", "tgt", "target", "pubkey", "to"}},
	{names: []string{"nip04"}, isBool: true},
}

var decryptFlags = []flagSpec{
	{names: []string{"sec"}}, {names: []string{"sender-pubkey", "p", "src", "source", "pubkey", "from"}},
	{names: []string{"nip04"}, isBool: true},
}

func cmdEncrypt(args []string) {
	const usage = "usage: nak encrypt --sec SEC -p RECIPIENT_PUBKEY [PLAINTEXT] (or the plaintext on stdin)"
	p, err := parse(args, encryptFlags)
	if err != nil {
		die("%v", err)
	}
	if p.bools["nip04"] {
		die("--nip04 is not supported by nak-compat (NIP-44 only)")
	}
	pub := pubKeyFlag(p, "recipient-pubkey", usage)
	sec := secretKey(p)
	plaintext := argOrStdin(p, usage)
	ct, err := nip44.Encrypt(plaintext, conversationKey(pub, sec))
	if err != nil {
		die("failed to encrypt: %v", err)
	}
	fmt.Println(ct)
}

func cmdDecrypt(args []string) {
	const usage = "usage: nak decrypt --sec SEC -p SENDER_PUBKEY [CIPHERTEXT] (or the ciphertext on stdin)"
	p, err := parse(args, decryptFlags)
	if err != nil {
		die("%v", err)
	}
	if p.bools["nip04"] {
		die("--nip04 is not supported by nak-compat (NIP-44 only)")
	}
	pub := pubKeyFlag(p, "sender-pubkey", usage)
	sec := secretKey(p)
	ct := strings.TrimSpace(argOrStdin(p, usage))
	pt, err := nip44.Decrypt(ct, conversationKey(pub, sec))
	if err != nil {
		die("failed to decrypt: %v", err)
	}
	fmt.Println(pt)
}

// randomPast returns now minus up to two days, as NIP-59 recommends for seals and wraps.
func randomPast() nostr.Timestamp {
	return nostr.Now() - nostr.Timestamp(mrand.Int63n(2*24*60*60))
}

func cmdGift(args []string) {
	const usage = "usage: nak gift wrap --sec SENDER_SEC -p RECIPIENT_PUBKEY < EVENT_JSON | nak gift unwrap --sec RECIPIENT_SEC [--from SENDER_PUBKEY] < WRAP_JSON"
	if len(args) == 0 {
		die("%s", usage)
	}
	switch args[0] {
	case "wrap":
		p, err := parse(args[1:], []flagSpec{
			{names: []string{"sec"}}, {names: []string{"recipient-pubkey", "p", "tgt", "target", "pubkey", "to"}},
			{names: []string{"use-our-identity-key"}, isBool: true}, {names: []string{"use-their-identity-key"}, isBool: true},
		})
		if err != nil {
			die("%v", err)
		}
		recipient := pubKeyFlag(p, "recipient-pubkey", usage)
		sec := secretKey(p)
		sender, _ := nostr.GetPublicKey(sec)
		ck := conversationKey(recipient, sec)
		for _, raw := range stdinJSONs(usage) {
			fmt.Println(giftWrap(raw, sender, sec, recipient, ck).String())
		}
	case "unwrap":
		p, err := parse(args[1:], []flagSpec{
			{names: []string{"sec"}}, {names: []string{"from", "sender-pubkey", "p"}},
		})
		if err != nil {
			die("%v", err)
		}
		sec := secretKey(p)
		from := ""
		if _, ok := p.last("from"); ok {
			from = pubKeyFlag(p, "from", usage)
		}
		failed := false
		for _, raw := range stdinJSONs(usage) {
			rumor, err := giftUnwrap(raw, sec, from)
			if err != nil {
				fmt.Fprintf(os.Stderr, "nak: gift unwrap: %v\n", err)
				failed = true
				continue
			}
			fmt.Println(rumor.String())
		}
		if failed {
			os.Exit(1)
		}
	default:
		die("%s", usage)
	}
}

// giftWrap turns the event into a rumor (no sig, pubkey = sender, id recomputed), seals it (kind 13,
// NIP-44 to the recipient, signed by the sender) and wraps the seal (kind 1059, NIP-44 from a fresh
// random key, signed by it, tagged p=recipient); seal and wrap created_at are up to 2 days ago.
func giftWrap(raw json.RawMessage, sender, sec, recipient string, ck [32]byte) nostr.Event {
	var rumor nostr.Event
	if err := json.Unmarshal(raw, &rumor); err != nil {
		die("invalid event JSON on stdin: %v", err)
	}
	rumor.Sig = ""
	rumor.PubKey = sender
	if rumor.Tags == nil {
		rumor.Tags = nostr.Tags{}
	}
	if rumor.CreatedAt == 0 {
		rumor.CreatedAt = nostr.Now()
	}
	rumor.ID = rumor.GetID()
	sealed, err := nip44.Encrypt(rumor.String(), ck)
	if err != nil {
		die("failed to encrypt the rumor: %v", err)
	}
	seal := nostr.Event{Kind: nostr.KindSeal, Content: sealed, CreatedAt: randomPast(), Tags: nostr.Tags{}}
	if err := seal.Sign(sec); err != nil {
		die("failed to sign the seal: %v", err)
	}
	ephemeral := nostr.GeneratePrivateKey()
	wrapped, err := nip44.Encrypt(seal.String(), conversationKey(recipient, ephemeral))
	if err != nil {
		die("failed to encrypt the seal: %v", err)
	}
	wrap := nostr.Event{Kind: nostr.KindGiftWrap, Content: wrapped, CreatedAt: randomPast(),
		Tags: nostr.Tags{{"p", recipient}}}
	if err := wrap.Sign(ephemeral); err != nil {
		die("failed to sign the gift wrap: %v", err)
	}
	return wrap
}

// giftUnwrap opens a kind-1059 wrap addressed to sec's key and returns the rumor. It refuses a wrap
// or seal with a bad signature or id, a seal that is not kind 13, a seal not signed by from (when
// given), and a rumor whose pubkey is not the seal's signer (NIP-17: that would let anyone who
// seals impersonate anyone), or whose id, when present, is not its hash.
func giftUnwrap(raw json.RawMessage, sec, from string) (nostr.Event, error) {
	var wrap, seal, rumor nostr.Event
	if err := json.Unmarshal(raw, &wrap); err != nil {
		return rumor, fmt.Errorf("invalid gift wrap JSON: %w", err)
	}
	if wrap.Kind != nostr.KindGiftWrap {
		return rumor, fmt.Errorf("not a gift wrap event (kind %d)", wrap.Kind)
	}
	if !wrap.CheckID() {
		return rumor, fmt.Errorf("gift wrap %s has a wrong id", wrap.ID)
	}
	if ok, _ := wrap.CheckSignature(); !ok {
		return rumor, fmt.Errorf("gift wrap %s has an invalid signature", wrap.ID)
	}
	ck, err := nip44.GenerateConversationKey(wrap.PubKey, sec)
	if err != nil {
		return rumor, fmt.Errorf("gift wrap %s: %w", wrap.ID, err)
	}
	sealJSON, err := nip44.Decrypt(wrap.Content, ck)
	if err != nil {
		return rumor, fmt.Errorf("failed to decrypt the seal of %s (not addressed to this key?): %w", wrap.ID, err)
	}
	if err := json.Unmarshal([]byte(sealJSON), &seal); err != nil {
		return rumor, fmt.Errorf("invalid seal JSON in %s: %w", wrap.ID, err)
	}
	if seal.Kind != nostr.KindSeal {
		return rumor, fmt.Errorf("not a seal event (kind %d) in %s", seal.Kind, wrap.ID)
	}
	if !seal.CheckID() {
		return rumor, fmt.Errorf("seal in %s has a wrong id", wrap.ID)
	}
	if ok, _ := seal.CheckSignature(); !ok {
		return rumor, fmt.Errorf("seal signature is invalid in %s", wrap.ID)
	}
	if from != "" && seal.PubKey != from {
		return rumor, fmt.Errorf("seal in %s is signed by %s, not by --from %s", wrap.ID, seal.PubKey, from)
	}
	ck, err = nip44.GenerateConversationKey(seal.PubKey, sec)
	if err != nil {
		return rumor, fmt.Errorf("seal in %s: %w", wrap.ID, err)
	}
	rumorJSON, err := nip44.Decrypt(seal.Content, ck)
	if err != nil {
		return rumor, fmt.Errorf("failed to decrypt the rumor in %s: %w", wrap.ID, err)
	}
	if err := json.Unmarshal([]byte(rumorJSON), &rumor); err != nil {
		return rumor, fmt.Errorf("invalid rumor JSON in %s: %w", wrap.ID, err)
	}
	if rumor.PubKey != seal.PubKey {
		return rumor, fmt.Errorf("rumor pubkey %q differs from the seal's signer %s in %s: refusing a forged sender",
			rumor.PubKey, seal.PubKey, wrap.ID)
	}
	if rumor.ID != "" && !rumor.CheckID() {
		return rumor, fmt.Errorf("rumor in %s has a wrong id %s (its hash is %s)", wrap.ID, rumor.ID, rumor.GetID())
	}
	if rumor.Tags == nil {
		rumor.Tags = nostr.Tags{}
	}
	rumor.ID = rumor.GetID()
	return rumor, nil
}

func main() {
	if len(os.Args) < 2 {
		die("usage: nak event|req|key|encode|decode|verify|encrypt|decrypt|gift ... (%s)", version)
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "event":
		cmdEvent(args)
	case "req":
		cmdReq(args)
	case "key":
		cmdKey(args)
	case "encode":
		cmdEncode(args)
	case "decode":
		cmdDecode(args)
	case "verify":
		cmdVerify()
	case "encrypt":
		cmdEncrypt(args)
	case "decrypt":
		cmdDecrypt(args)
	case "gift":
		cmdGift(args)
	case "--version", "-v", "version":
		fmt.Println(version)
	case "--help", "-h", "help":
		fmt.Println(version + "\ncommands: event, req, key generate|public, encode, decode, verify, encrypt, decrypt, gift wrap|unwrap")
	default:
		die("unknown command %q (this is %s)", os.Args[1], version)
	}
}
