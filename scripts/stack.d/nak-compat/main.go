// nak-compat: a small stand-in for fiatjaf's `nak` (the Nostr army knife), built by scripts/stack.d/nostr.sh.
//
// Why: the Go module proxy reachable here refuses github.com/fiatjaf/nak (every version: 403 "not
// available"), so the real nak cannot be installed. This program implements the subset of nak's
// command line that the test stack uses, with nak's flag names and output shapes, on top of go-nostr
// (github.com/nbd-wtf/go-nostr, which the proxy does serve):
//
//	nak event [--sec HEX|nsec] [-k KIND] [-c CONTENT|@FILE] [-t name=v1;v2]... [-e ID]... [-p PUBKEY]...
//	          [-d ID] [--created-at TS|now] [--envelope] [RELAY...]
//	    signs an event (also accepts JSON event templates on stdin, one per line, like nak), prints it
//	    as JSON on stdout, publishes it to each RELAY ("publishing to URL... success." on stderr).
//	    Unlike nak, exits 1 if any relay did not accept it.
//	nak req [-k KIND]... [-a PUBKEY]... [-i ID]... [-t name=value]... [-e ID]... [-p PUBKEY]... [-d D]...
//	        [-s SINCE] [-u UNTIL] [-l LIMIT] [--search Q] [--stream] [--timeout SECONDS] [RELAY...]
//	    without relays prints the REQ message; with relays prints each matching event as one JSON line
//	    (deduplicated) and exits after EOSE from every relay (or keeps listening with --stream).
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
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nbd-wtf/go-nostr"
	"github.com/nbd-wtf/go-nostr/nip19"
)

const version = "nak-compat 0.1.0 (paygress stand-in for nak, on go-nostr v0.38.2)"

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

// stdinLines returns lines of stdin when it is a file or a pipe that delivers something within 1 s
// (nak reads event templates from stdin; waiting forever on an inherited, idle pipe would hang scripts).
func stdinLines() []string {
	st, err := os.Stdin.Stat()
	if err != nil || st.Mode()&os.ModeCharDevice != 0 {
		return nil
	}
	type res struct {
		data []byte
	}
	ch := make(chan res, 1)
	go func() {
		b, _ := io.ReadAll(os.Stdin)
		ch <- res{b}
	}()
	var data []byte
	if st.Mode().IsRegular() {
		data = (<-ch).data
	} else {
		select {
		case r := <-ch:
			data = r.data
		case <-time.After(1 * time.Second):
			return nil
		}
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
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

	templates := stdinLines()
	if len(templates) == 0 {
		templates = []string{""}
	}
	ctx := context.Background()
	conns := map[string]*nostr.Relay{}
	failed := false
	for _, tmpl := range templates {
		ev := nostr.Event{Kind: 1, Content: "hello from the nostr army knife", Tags: nostr.Tags{}}
		fromStdin := false
		if tmpl != "" {
			if err := json.Unmarshal([]byte(tmpl), &ev); err != nil {
				die("invalid event JSON on stdin: %v", err)
			}
			fromStdin = true
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
		}
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
		if ts, ok := p.last("created-at"); ok {
			ev.CreatedAt = parseTimestamp(ts)
		} else if !fromStdin || ev.CreatedAt == 0 {
			ev.CreatedAt = nostr.Now()
		}
		if fromStdin && ev.Sig != "" && len(p.vals) == 0 {
			// a complete signed event: publish as is
			if ok, _ := ev.CheckSignature(); !ok {
				die("event on stdin has an invalid signature")
			}
		} else if err := ev.Sign(sec); err != nil {
			die("signing: %v", err)
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
			keys = stdinLines()
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
	lines := stdinLines()
	if len(lines) == 0 {
		die("usage: echo EVENT_JSON | nak verify")
	}
	for _, l := range lines {
		var ev nostr.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
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

func main() {
	if len(os.Args) < 2 {
		die("usage: nak event|req|key|encode|decode|verify ... (%s)", version)
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
	case "--version", "-v", "version":
		fmt.Println(version)
	case "--help", "-h", "help":
		fmt.Println(version + "\ncommands: event, req, key generate|public, encode, decode, verify")
	default:
		die("unknown command %q (this is %s)", os.Args[1], version)
	}
}
