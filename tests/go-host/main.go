// Command attestor-go-host loads the attestor plugin with HashiCorp's real go-plugin client
// (Debian bookworm: go-plugin 1.0.1, grpc 1.33, golang/protobuf 1.3, hclog 0.11) configured
// the way the SPIRE agent configures it (pkg/common/catalog/external.go):
// cookie WorkloadAttestor=WorkloadAttestor, gRPC only, no AutoMTLS, SHA-256 checksum,
// broker.Accept(1) with the metrics host service during dispense, then Init → Configure →
// Attest … → Deinit → Kill. AttestReference (the Broker API's RPC) is called as the agent
// calls it too: raw (attest_reference), or through the agent's fallback wrapper
// (agent_attest_reference, agent_attest: pkg/agent/plugin/workloadattestor/v1.go).
//
// It is driven by the Rust integration tests (tests/tests/plugin.rs, cri_fast_path.rs) through
// tests/src/go_host.rs: one JSON command per stdin line, one JSON result per stdout line. Host
// logs (hclog JSON, including the plugin's relayed stderr) go to stderr and are kept so that
// `wait_log` and `kill` can inspect them.
//
// Build (GOPATH mode, Debian's packages): see tests/src/go_host.rs `GoHost::binary`.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/golang/protobuf/proto"
	"github.com/golang/protobuf/ptypes/any"
	"github.com/golang/protobuf/ptypes/empty"
	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	pluginType         = "WorkloadAttestor"
	hostServiceID      = 1
	metricsServiceName = "spire.hostservice.common.metrics.v1.Metrics"
	initPath           = "/spire.service.private.init.v1.Init/"
	configPath         = "/spire.service.common.config.v1.Config/"
	attestPath         = "/spire.plugin.agent.workloadattestor.v1.WorkloadAttestor/Attest"
	attestRefPath      = "/spire.plugin.agent.workloadattestor.v1.WorkloadAttestor/AttestReference"
	// SPIRE v1.15.3 pkg/agent/broker/brokercontext/context.go (callerIDMetadataKey): the
	// broker caller's SPIFFE ID, which AppendCallerIDToOutgoingContext adds to AttestReference.
	callerIDMetadataKey = "spire-agent-broker-caller-id"
)

type command struct {
	Op        string `json:"op"`
	Hcl       string `json:"hcl"`
	Pid       int32  `json:"pid"`
	TimeoutMs int    `json:"timeout_ms"`
	Message   string `json:"message"`
	Field     string `json:"field"`
	Value     string `json:"value"`
	Checksum  string `json:"checksum"`
	N         int    `json:"n"`
	AutoMTLS  bool   `json:"automtls"`
	// NoMetrics: Init without the metrics host service name (the plugin then sends none).
	NoMetrics bool `json:"no_metrics"`
	// Entered: the metrics op also waits until this many calls reached the handlers.
	Entered int `json:"entered"`
	// MetricsSink: "aggregate" for load in the benchmark (see metricsRecorder.aggregate).
	MetricsSink string `json:"metrics_sink"`
	// ID names a call started with attest_async, for await.
	ID   string `json:"id"`
	Mode string `json:"mode"`

	// The reference of the attest_reference ops (see command.reference): Ref is "pid" (Pid),
	// "object" (Plural … UID), "raw" (TypeURL, RawValue: base64 in JSON) or "none" (no
	// reference at all); empty: "raw" if TypeURL is set, else "object" if an object field
	// is, else "pid".
	Ref       string `json:"ref"`
	Plural    string `json:"plural"`
	Group     string `json:"group"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	TypeURL   string `json:"type_url"`
	RawValue  []byte `json:"raw_value"`
	// CallerIDs: one spire-agent-broker-caller-id metadata value each (the agent sends one,
	// or none outside the Broker API).
	CallerIDs []string `json:"caller_ids"`
	// Agent: attest_reference_many and attest_reference_async call through the agent's
	// wrapper (agent_attest_reference) instead of the raw RPC.
	Agent bool `json:"agent"`
}

type result map[string]interface{}

// ---- log capture ----

type logCapture struct {
	mu      sync.Mutex
	cond    *sync.Cond
	entries []map[string]interface{}
	raw     []string
	partial []byte
}

func newLogCapture() *logCapture {
	c := &logCapture{}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *logCapture) Write(p []byte) (int, error) {
	os.Stderr.Write(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partial = append(c.partial, p...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		var m map[string]interface{}
		if json.Unmarshal(c.partial[:i], &m) == nil {
			c.entries = append(c.entries, m)
		}
		c.raw = append(c.raw, string(c.partial[:i]))
		c.partial = c.partial[i+1:]
	}
	c.cond.Broadcast()
	return len(p), nil
}

func (c *logCapture) mark() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// find returns the first entry at index >= since with @message == msg (and field == value).
func (c *logCapture) find(since int, msg, field, value string, timeout time.Duration) map[string]interface{} {
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		c.mu.Lock()
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	defer timer.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for _, e := range c.entries[since:] {
			if e["@message"] != msg {
				continue
			}
			if field != "" && fmt.Sprint(e[field]) != value {
				continue
			}
			return e
		}
		if time.Now().After(deadline) {
			return nil
		}
		c.cond.Wait()
	}
}

// ---- the agent's metrics host service (behind broker ID 1) ----

type metricsRecorder struct {
	mu    sync.Mutex
	calls []result
	// entered counts calls that reached a handler, held or not.
	entered int
	// held: while non-nil, handlers wait for it to be closed (an agent that is slow to
	// answer), after noting their arrival time.
	held chan struct{}
	// aggregate (load's metrics_sink "aggregate", for the benchmark): keep a count and a
	// sum per method, key and labels, as the agent's in-memory sink does, instead of every
	// call (more work for this process's GC, and this process also times the calls).
	aggregate  bool
	aggregated map[string]*aggregateSum
	n          int
}

type aggregateSum struct {
	count int
	total float64
}

func (m *metricsRecorder) record(method string, req proto.Message) {
	// The agent's go-metrics reads the clock on receipt (MeasureSinceWithLabels:
	// time.Now().Sub(start)): recv is that moment.
	recv := time.Now().UnixNano()
	m.mu.Lock()
	m.entered++
	held := m.held
	m.mu.Unlock()
	if held != nil {
		<-held
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.aggregate {
		m.n++
		var k string
		var v float64
		switch r := req.(type) {
		case *IncrCounterRequest:
			k, v = fmt.Sprint(method, r.Key, labels(r.Labels)), float64(r.Val)
		case *MeasureSinceRequest:
			k, v = fmt.Sprint(method, r.Key, labels(r.Labels)), float64(recv-r.Time)/1e6
		}
		a := m.aggregated[k]
		if a == nil {
			a = &aggregateSum{}
			m.aggregated[k] = a
		}
		a.count++
		a.total += v
		return
	}
	r := result{"method": method}
	switch v := req.(type) {
	case *IncrCounterRequest:
		r["key"], r["val"], r["labels"] = v.Key, v.Val, labels(v.Labels)
	case *MeasureSinceRequest:
		r["key"], r["time_set"], r["labels"] = v.Key, v.Time > 0, labels(v.Labels)
		// What the agent records as the latency: receipt − time.
		r["agent_latency_us"] = (recv - v.Time) / 1000
	}
	m.calls = append(m.calls, r)
}

// hold makes the handlers wait (on) or lets them go (off).
func (m *metricsRecorder) hold(on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if on && m.held == nil {
		m.held = make(chan struct{})
	}
	if !on && m.held != nil {
		close(m.held)
		m.held = nil
	}
}

func (m *metricsRecorder) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.calls) + m.n
}

func labels(ls []*Label) map[string]string {
	out := map[string]string{}
	for _, l := range ls {
		out[l.Name] = l.Value
	}
	return out
}

func metricsMethod(name string, newReq func() proto.Message) grpc.MethodDesc {
	return grpc.MethodDesc{
		MethodName: name,
		Handler: func(srv interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
			req := newReq()
			if err := dec(req); err != nil {
				return nil, err
			}
			srv.(*metricsRecorder).record(name, req)
			return &empty.Empty{}, nil
		},
	}
}

var metricsDesc = grpc.ServiceDesc{
	ServiceName: metricsServiceName,
	HandlerType: (*interface{})(nil),
	Methods: []grpc.MethodDesc{
		metricsMethod("IncrCounter", func() proto.Message { return &IncrCounterRequest{} }),
		metricsMethod("MeasureSince", func() proto.Message { return &MeasureSinceRequest{} }),
	},
}

// ---- the plugin, as SPIRE's catalog dispenses it ----

type attestorPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	metrics *metricsRecorder
}

func (p *attestorPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("host side only")
}

func (p *attestorPlugin) GRPCClient(ctx context.Context, broker *plugin.GRPCBroker, conn *grpc.ClientConn) (interface{}, error) {
	// SPIRE: broker.Accept(HostServiceProviderID) while dispensing; host services on it.
	lis, err := broker.Accept(hostServiceID)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer()
	srv.RegisterService(&metricsDesc, p.metrics)
	go srv.Serve(lis)
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	return conn, nil
}

// ---- host ----

type host struct {
	pending map[string]chan result
	rpc     plugin.ClientProtocol
	path    string
	logs    *logCapture
	logger  hclog.Logger
	client  *plugin.Client
	conn    *grpc.ClientConn
	since   int
	metrics *metricsRecorder
}

func (h *host) load(cmd command) result {
	if h.client != nil {
		return result{"ok": false, "error": "already loaded"}
	}
	sum := cmd.Checksum
	if sum == "" {
		data, err := os.ReadFile(h.path)
		if err != nil {
			return result{"ok": false, "error": err.Error()}
		}
		s := sha256.Sum256(data)
		sum = hex.EncodeToString(s[:])
	}
	checksum, err := hex.DecodeString(sum)
	if err != nil {
		return result{"ok": false, "error": "checksum is not a valid hex string"}
	}
	h.since = h.logs.mark()
	h.metrics = &metricsRecorder{aggregate: cmd.MetricsSink == "aggregate", aggregated: map[string]*aggregateSum{}}
	started := time.Now()
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig: plugin.HandshakeConfig{
			ProtocolVersion:  1,
			MagicCookieKey:   pluginType,
			MagicCookieValue: pluginType,
		},
		Plugins:          map[string]plugin.Plugin{pluginType: &attestorPlugin{metrics: h.metrics}},
		Cmd:              exec.Command(h.path),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		SecureConfig:     &plugin.SecureConfig{Checksum: checksum, Hash: sha256.New()},
		Logger:           h.logger,
		Stderr:           io.Discard,
		// SPIRE: false. true checks that the plugin refuses AutoMTLS (it exits before the
		// handshake; it never serves plaintext to a host that asked for TLS).
		AutoMTLS: cmd.AutoMTLS,
	})
	rpc, err := client.Client()
	connected := time.Since(started)
	if err != nil {
		client.Kill()
		return result{"ok": false, "error": err.Error()}
	}
	raw, err := rpc.Dispense(pluginType)
	if err != nil {
		client.Kill()
		return result{"ok": false, "error": err.Error()}
	}
	h.client, h.conn, h.rpc = client, raw.(*grpc.ClientConn), rpc
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp := &InitResponse{}
	hostServices := []string{metricsServiceName}
	if cmd.NoMetrics {
		hostServices = nil
	}
	err = h.conn.Invoke(ctx, initPath+"Init", &InitRequest{HostServiceNames: hostServices}, resp)
	if err != nil {
		return result{"ok": false, "error": "Init: " + err.Error()}
	}
	return result{
		"ok":              true,
		"plugin_services": resp.PluginServiceNames,
		"connect_us":      connected.Microseconds(),
		"load_us":         time.Since(started).Microseconds(),
		"negotiated":      client.NegotiatedVersion(),
	}
}

func code(err error) result {
	if err == nil {
		return result{"code": "OK", "message": ""}
	}
	s := status.Convert(err)
	return result{"code": s.Code().String(), "message": s.Message()}
}

func (h *host) ctx(timeoutMs int) (context.Context, context.CancelFunc) {
	if timeoutMs <= 0 {
		timeoutMs = 30000
	}
	return context.WithTimeout(context.Background(), time.Duration(timeoutMs)*time.Millisecond)
}

func (h *host) attest(conn *grpc.ClientConn, cmd command) result {
	ctx, cancel := h.ctx(cmd.TimeoutMs)
	defer cancel()
	resp := &AttestResponse{}
	r := code(conn.Invoke(ctx, attestPath, &AttestRequest{Pid: cmd.Pid}, resp))
	sel := resp.SelectorValues
	if sel == nil {
		sel = []string{}
	}
	r["selectors"] = sel
	return r
}

// reference is the command's reference packed as the agent packs it (anypb.New), nil for "none".
func (cmd command) reference() (*any.Any, error) {
	kind := cmd.Ref
	if kind == "" {
		switch {
		case cmd.TypeURL != "":
			kind = "raw"
		case cmd.Plural != "" || cmd.Group != "" || cmd.Namespace != "" || cmd.Name != "" || cmd.UID != "":
			kind = "object"
		default:
			kind = "pid"
		}
	}
	switch kind {
	case "none":
		return nil, nil
	case "pid":
		return packBroker("WorkloadPIDReference", &WorkloadPIDReference{Pid: cmd.Pid})
	case "object":
		// The type always; the key if Namespace or Name is set (a UID-only reference has
		// none). Other shapes (no type, an empty key): "raw".
		obj := &KubernetesObjectReference{Type: &KubernetesObjectType{Plural: cmd.Plural, Group: cmd.Group}, Uid: cmd.UID}
		if cmd.Namespace != "" || cmd.Name != "" {
			obj.Key = &KubernetesObjectKey{Namespace: cmd.Namespace, Name: cmd.Name}
		}
		return packBroker("KubernetesObjectReference", obj)
	case "raw":
		return &any.Any{TypeUrl: cmd.TypeURL, Value: cmd.RawValue}, nil
	}
	return nil, fmt.Errorf("unknown ref %q", kind)
}

// attestByPID is the raw Attest call (v1.go attestByPID).
func attestByPID(ctx context.Context, conn *grpc.ClientConn, pid int32) ([]string, error) {
	resp := &AttestResponse{}
	err := conn.Invoke(ctx, attestPath, &AttestRequest{Pid: pid}, resp)
	return resp.SelectorValues, err
}

// attestByReference is the raw AttestReference call (v1.go attestByReference), with one
// caller-ID metadata value per callers entry.
func attestByReference(ctx context.Context, conn *grpc.ClientConn, ref *any.Any, callers []string) ([]string, error) {
	for _, id := range callers {
		ctx = metadata.AppendToOutgoingContext(ctx, callerIDMetadataKey, id)
	}
	resp := &AttestReferenceResponse{}
	err := conn.Invoke(ctx, attestRefPath, &AttestReferenceRequest{Reference: ref}, resp)
	return resp.SelectorValues, err
}

// attestResult is the attest op's shape (code, message, selectors), plus the RPCs made in
// order ("calls") and the time they took ("us").
func attestResult(sel []string, err error, calls []string, began time.Time) result {
	r := code(err)
	if sel == nil || err != nil {
		sel = []string{}
	}
	r["selectors"], r["calls"], r["us"] = sel, calls, time.Since(began).Microseconds()
	return r
}

// attestReference runs the command's reference through AttestReference: raw, or (agent) as
// SPIRE v1.15.3's V1.AttestReference does: on Unimplemented, a WorkloadPIDReference (exact
// type URL) falls back to Attest; any other reference returns the Unimplemented error.
func (h *host) attestReference(conn *grpc.ClientConn, cmd command, agent bool) result {
	began := time.Now()
	ref, err := cmd.reference()
	if err != nil {
		return result{"code": "HostError", "message": err.Error()}
	}
	ctx, cancel := h.ctx(cmd.TimeoutMs)
	defer cancel()
	calls := []string{"AttestReference"}
	sel, err := attestByReference(ctx, conn, ref, cmd.CallerIDs)
	if agent && status.Code(err) == codes.Unimplemented && ref.GetTypeUrl() == brokerTypeURLPrefix+"WorkloadPIDReference" {
		var pid WorkloadPIDReference
		if proto.Unmarshal(ref.Value, &pid) == nil {
			calls = append(calls, "Attest")
			sel, err = attestByPID(ctx, conn, pid.Pid)
		}
	}
	return attestResult(sel, err, calls, began)
}

// agentAttest is SPIRE v1.15.3's V1.Attest: Attest(pid); on Unimplemented, AttestReference
// with the PID packed as a WorkloadPIDReference (and the caller IDs, if any).
func (h *host) agentAttest(conn *grpc.ClientConn, cmd command) result {
	began := time.Now()
	ctx, cancel := h.ctx(cmd.TimeoutMs)
	defer cancel()
	calls := []string{"Attest"}
	sel, err := attestByPID(ctx, conn, cmd.Pid)
	if status.Code(err) == codes.Unimplemented {
		ref, perr := packBroker("WorkloadPIDReference", &WorkloadPIDReference{Pid: cmd.Pid})
		if perr != nil {
			return result{"code": "HostError", "message": perr.Error()}
		}
		calls = append(calls, "AttestReference")
		sel, err = attestByReference(ctx, conn, ref, cmd.CallerIDs)
	}
	return attestResult(sel, err, calls, began)
}

// attestReferenceMany makes N concurrent AttestReference calls for the same reference (as
// concurrent Broker API clients do), released together: each call's result (in call order)
// and the time until the last one answered.
func (h *host) attestReferenceMany(cmd command) result {
	n := cmd.N
	if n <= 0 {
		n = 1
	}
	conn := h.conn
	results := make([]result, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			results[i] = h.attestReference(conn, cmd, cmd.Agent)
		}(i)
	}
	began := time.Now()
	close(start)
	wg.Wait()
	return result{"results": results, "elapsed_us": time.Since(began).Microseconds()}
}

func (h *host) do(cmd command) result {
	if cmd.Op != "load" && cmd.Op != "wait_log" && cmd.Op != "await" && cmd.Op != "count_logs" && h.client == nil {
		return result{"code": "HostError", "message": "not loaded"}
	}
	switch cmd.Op {
	case "load":
		return h.load(cmd)
	case "configure":
		ctx, cancel := h.ctx(cmd.TimeoutMs)
		defer cancel()
		req := &ConfigureRequest{CoreConfiguration: &CoreConfiguration{TrustDomain: "example.org"}, HclConfiguration: cmd.Hcl}
		return code(h.conn.Invoke(ctx, configPath+"Configure", req, &ConfigureResponse{}))
	case "validate":
		ctx, cancel := h.ctx(cmd.TimeoutMs)
		defer cancel()
		req := &ConfigureRequest{CoreConfiguration: &CoreConfiguration{TrustDomain: "example.org"}, HclConfiguration: cmd.Hcl}
		resp := &ValidateResponse{}
		r := code(h.conn.Invoke(ctx, configPath+"Validate", req, resp))
		r["valid"], r["notes"] = resp.Valid, resp.Notes
		return r
	case "attest":
		return h.attest(h.conn, cmd)
	case "attest_async":
		// Concurrent calls, as the agent makes them for concurrent Workload API clients.
		ch := make(chan result, 1)
		h.pending[cmd.ID] = ch
		conn := h.conn
		go func() { ch <- h.attest(conn, cmd) }()
		return result{"started": cmd.ID}
	case "attest_reference":
		return h.attestReference(h.conn, cmd, false)
	case "agent_attest_reference":
		return h.attestReference(h.conn, cmd, true)
	case "agent_attest":
		return h.agentAttest(h.conn, cmd)
	case "attest_reference_many":
		return h.attestReferenceMany(cmd)
	case "attest_reference_async":
		// As attest_async, for AttestReference (raw, or the agent's wrapper with Agent).
		ch := make(chan result, 1)
		h.pending[cmd.ID] = ch
		conn := h.conn
		go func() { ch <- h.attestReference(conn, cmd, cmd.Agent) }()
		return result{"started": cmd.ID}
	case "await":
		ch, ok := h.pending[cmd.ID]
		if !ok {
			return result{"code": "HostError", "message": "no call " + cmd.ID}
		}
		delete(h.pending, cmd.ID)
		return <-ch
	case "bench":
		return h.bench(cmd)
	case "deinit":
		ctx, cancel := h.ctx(10000)
		defer cancel()
		return code(h.conn.Invoke(ctx, initPath+"Deinit", &DeinitRequest{}, &DeinitResponse{}))
	case "metrics":
		// The calls recorded, once there are N of them (or at the timeout), and how many
		// reached a handler (held ones too): once that is Entered, if Entered is set.
		deadline := time.Now().Add(time.Duration(cmd.TimeoutMs) * time.Millisecond)
		for {
			h.metrics.mu.Lock()
			calls := append([]result{}, h.metrics.calls...)
			entered := h.metrics.entered
			h.metrics.mu.Unlock()
			if (len(calls) >= cmd.N && entered >= cmd.Entered) || time.Now().After(deadline) {
				return result{"calls": calls, "entered": entered}
			}
			time.Sleep(10 * time.Millisecond)
		}
	case "metrics_hold":
		// Value "on": the metrics host service holds every call until "off", or for
		// TimeoutMs if set (so that it lets go while another command waits).
		on := cmd.Value == "on"
		h.metrics.hold(on)
		if on && cmd.TimeoutMs > 0 {
			m := h.metrics
			time.AfterFunc(time.Duration(cmd.TimeoutMs)*time.Millisecond, func() { m.hold(false) })
		}
		return result{"ok": true}
	case "count_logs":
		// Log lines (host and relayed plugin lines) containing Value, since the process began.
		h.logs.mu.Lock()
		n := 0
		for _, l := range h.logs.raw {
			if strings.Contains(l, cmd.Value) {
				n++
			}
		}
		h.logs.mu.Unlock()
		return result{"count": n}
	case "wait_log":
		e := h.logs.find(h.since, cmd.Message, cmd.Field, cmd.Value, time.Duration(cmd.TimeoutMs)*time.Millisecond)
		return result{"found": e != nil, "entry": e}
	case "kill":
		return h.kill()
	case "ping":
		// go-plugin's health check: grpc.health.v1.Health/Check for service "plugin".
		return code(h.rpc.Ping())
	}
	return result{"code": "HostError", "message": "unknown op " + cmd.Op}
}

// bench times n sequential calls after 100 warm-up calls: Attest(pid), or with
// mode "health" grpc.health.v1.Health/Check (the same connection, no attestor work: the
// transport's share of an Attest).
func (h *host) bench(cmd command) result {
	ctx, cancel := h.ctx(600000)
	defer cancel()
	call := func() error {
		return h.conn.Invoke(ctx, attestPath, &AttestRequest{Pid: cmd.Pid}, &AttestResponse{})
	}
	if cmd.Mode == "health" {
		health := grpc_health_v1.NewHealthClient(h.conn)
		call = func() error {
			_, err := health.Check(ctx, &grpc_health_v1.HealthCheckRequest{Service: "plugin"})
			return err
		}
	}
	for i := 0; i < 100; i++ {
		if err := call(); err != nil {
			return code(err)
		}
	}
	d := make([]time.Duration, cmd.N)
	// Metrics RPCs the plugin sent while the calls were measured (its flushes compete
	// with the calls only if some land in this window).
	before := h.metrics.count()
	hostCPU, pluginCPU := cpuTime(0), cpuTime(h.client.ReattachConfig().Pid)
	began := time.Now()
	for i := range d {
		t := time.Now()
		if err := call(); err != nil {
			return code(err)
		}
		d[i] = time.Since(t)
	}
	elapsed := time.Since(began)
	during := h.metrics.count() - before
	hostCPU, pluginCPU = cpuTime(0)-hostCPU, cpuTime(h.client.ReattachConfig().Pid)-pluginCPU
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	pct := func(p float64) int64 { return d[int(p*float64(len(d)-1))].Microseconds() }
	return result{"code": "OK", "n": len(d), "p50_us": pct(0.50), "p99_us": pct(0.99), "max_us": d[len(d)-1].Microseconds(),
		"metrics_calls": during, "elapsed_ms": elapsed.Milliseconds(),
		"host_cpu_ms": hostCPU.Milliseconds(), "plugin_cpu_ms": pluginCPU.Milliseconds()}
}

// cpuTime is the user+system CPU time of process pid (0: this host) so far, from
// /proc/<pid>/stat (clock ticks of 10 ms: USER_HZ is 100 on Linux).
func cpuTime(pid int) time.Duration {
	path := "/proc/self/stat"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/stat", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// kill unloads as go-plugin's Kill does (Shutdown, 2 s grace, then SIGKILL) and reports
// whether the plugin exited on its own and with which status.
func (h *host) kill() result {
	since := h.since
	h.client.Kill()
	exited := h.logs.find(since, "plugin process exited", "", "", 5*time.Second)
	forced := h.logs.find(since, "plugin failed to exit gracefully", "", "", 0)
	h.client, h.conn = nil, nil
	r := result{"graceful": forced == nil, "exited_logged": exited != nil, "exit_error": ""}
	if exited != nil {
		if e, ok := exited["error"]; ok {
			r["exit_error"] = fmt.Sprint(e)
		}
	}
	return r
}

func main() {
	path := flag.String("plugin", "", "path of the plugin binary")
	agentConf := flag.String("agent-config", "", "print the WorkloadAttestor \"k8s\" entry of this agent configuration as JSON and exit")
	flag.Parse()
	if *agentConf != "" {
		r, err := agentPlugin(*agentConf, pluginType, "k8s")
		if err != nil {
			r = result{"error": err.Error()}
		}
		json.NewEncoder(os.Stdout).Encode(r)
		return
	}
	if *path == "" {
		fmt.Fprintln(os.Stderr, "usage: attestor-go-host -plugin <path>  (JSON commands on stdin) | -agent-config <file>")
		os.Exit(2)
	}
	logs := newLogCapture()
	h := &host{
		pending: map[string]chan result{},
		path:    *path,
		logs:    logs,
		logger: hclog.New(&hclog.LoggerOptions{
			Name: "agent", Level: hclog.Trace, JSONFormat: true, Output: logs,
		}),
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 0, 1<<16), 1<<22)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var cmd command
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			out.Encode(result{"code": "HostError", "message": err.Error()})
			continue
		}
		out.Encode(h.do(cmd))
	}
	if h.client != nil {
		h.client.Kill()
	}
}
