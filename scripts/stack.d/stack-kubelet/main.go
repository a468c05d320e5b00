// stack-kubelet serves the one part of the kubelet API the Paygress test stack needs and stack-node lacks:
// port-forward (`kubectl port-forward` → kube-apiserver → kubelet /portForward/{namespace}/{pod}). The
// protocol (SPDY/3.1 and WebSocket, portforward.k8s.io) is the kubelet's own code, k8s.io/cri-streaming;
// this program only finds the pod's IP through the API server and dials it.
//
// It listens on loopback only, with TLS, and accepts only clients whose certificate the stack's CA signed
// (the API server's --kubelet-client-certificate).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/portforward"
)

// The CommonName of the client certificate kube-apiserver presents (--kubelet-client-certificate).
const apiserverClientCN = "kube-apiserver-kubelet-client"

type config struct {
	listen, apiserver, tokenFile, caFile, certFile, keyFile string
}

// forwarder implements portforward.PortForwarder. The "name" it is given is "namespace/pod".
type forwarder struct {
	api  *http.Client
	base string
	// The stack's admin token, used only to read pods: the stack has no narrower identity for its node.
	token string
}

type podStatus struct {
	Metadata struct {
		UID string `json:"uid"`
	} `json:"metadata"`
	Status struct {
		Phase string `json:"phase"`
		PodIP string `json:"podIP"`
	} `json:"status"`
}

// pod returns the pod's IP and UID as the API server reports them.
func (f *forwarder) pod(ctx context.Context, namespace, name string) (string, string, error) {
	u := fmt.Sprintf("%s/api/v1/namespaces/%s/pods/%s", f.base, url.PathEscape(namespace), url.PathEscape(name))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", "", err
	}
	req.Header.Set("Authorization", "Bearer "+f.token)
	resp, err := f.api.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", "", fmt.Errorf("pod %s/%s: API server answered %s", namespace, name, resp.Status)
	}
	var p podStatus
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&p); err != nil {
		return "", "", err
	}
	if p.Status.Phase != "Running" || p.Status.PodIP == "" {
		return "", "", fmt.Errorf("pod %s/%s is not running (phase %q)", namespace, name, p.Status.Phase)
	}
	return p.Status.PodIP, p.Metadata.UID, nil
}

func (f *forwarder) PortForward(ctx context.Context, name string, uid string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	namespace, pod, ok := strings.Cut(name, "/")
	if !ok {
		return fmt.Errorf("bad pod name %q", name)
	}
	ip, podUID, err := f.pod(ctx, namespace, pod)
	if err != nil {
		return err
	}
	// As the kubelet does: a request for another incarnation of the pod is refused.
	if uid != "" && uid != podUID {
		return fmt.Errorf("pod %s has UID %s, not %s", name, podUID, uid)
	}
	target := net.JoinHostPort(ip, strconv.Itoa(int(port)))
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", target)
	if err != nil {
		return fmt.Errorf("pod %s port %d: %w", name, port, err)
	}
	defer conn.Close()
	log.Printf("forwarding %s port %d to %s", name, port, target)
	// Client -> pod ends with a half-close, so the pod still gets to answer (a client that sends and then
	// shuts down its side, like `nc -N`); pod -> client ends the stream.
	toPod := make(chan error, 1)
	fromPod := make(chan error, 1)
	go func() {
		_, err := io.Copy(conn, stream)
		if tcp, ok := conn.(*net.TCPConn); ok {
			_ = tcp.CloseWrite()
		}
		toPod <- err
	}()
	go func() { _, err := io.Copy(stream, conn); fromPod <- err }()
	select {
	case err = <-fromPod:
	case err = <-toPod:
		// The client is done sending; give the pod a bounded time to finish its answer.
		select {
		case <-fromPod:
		case <-time.After(30 * time.Second):
		}
	}
	if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

func handler(f *forwarder) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	serve := func(w http.ResponseWriter, req *http.Request) {
		// Any certificate of the stack CA passed the handshake; only the API server's may forward.
		if req.TLS == nil || len(req.TLS.PeerCertificates) == 0 || req.TLS.PeerCertificates[0].Subject.CommonName != apiserverClientCN {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		namespace, pod, uid := req.PathValue("namespace"), req.PathValue("pod"), req.PathValue("uid")
		opts, err := portforward.NewV4Options(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		log.Printf("port-forward session for %s/%s from %s", namespace, pod, req.RemoteAddr)
		portforward.ServePortForward(w, req, f, namespace+"/"+pod, uid, opts,
			4*time.Hour, 30*time.Second, portforward.SupportedProtocols)
	}
	mux.HandleFunc("/portForward/{namespace}/{pod}", serve)
	mux.HandleFunc("/portForward/{namespace}/{pod}/{uid}", serve)
	return mux
}

func main() {
	var c config
	flag.StringVar(&c.listen, "listen", "127.0.0.1:28250", "address to serve the kubelet API on (loopback only)")
	flag.StringVar(&c.apiserver, "apiserver", "", "API server URL, e.g. https://127.0.0.1:26443")
	flag.StringVar(&c.tokenFile, "token-file", "", "file holding a bearer token allowed to get pods")
	flag.StringVar(&c.caFile, "ca", "", "CA that signed the API server's serving certificate and its kubelet client certificate")
	flag.StringVar(&c.certFile, "cert", "", "serving certificate (for 127.0.0.1)")
	flag.StringVar(&c.keyFile, "key", "", "serving key")
	flag.Parse()
	if c.apiserver == "" || c.tokenFile == "" || c.caFile == "" || c.certFile == "" || c.keyFile == "" {
		log.Fatal("usage: stack-kubelet --apiserver URL --token-file F --ca F --cert F --key F [--listen 127.0.0.1:PORT]")
	}
	if host, _, err := net.SplitHostPort(c.listen); err != nil || !net.ParseIP(host).IsLoopback() {
		log.Fatalf("--listen %q: must be a loopback address and port", c.listen)
	}
	token, err := os.ReadFile(c.tokenFile)
	if err != nil {
		log.Fatal(err)
	}
	caPEM, err := os.ReadFile(c.caFile)
	if err != nil {
		log.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		log.Fatalf("%s: no certificate", c.caFile)
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		log.Fatal(err)
	}
	f := &forwarder{
		api: &http.Client{
			Timeout:   15 * time.Second,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
		},
		base:  strings.TrimRight(c.apiserver, "/"),
		token: strings.TrimSpace(string(token)),
	}
	srv := &http.Server{
		Addr:              c.listen,
		Handler:           handler(f),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientCAs:    pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS12,
			// SPDY upgrades need HTTP/1.1.
			NextProtos: []string{"http/1.1"},
		},
	}
	log.Printf("stack-kubelet: serving port-forward on https://%s", c.listen)
	log.Fatal(srv.ListenAndServeTLS("", ""))
}
