// Command go-spire-podlist is the SPIRE baseline of `cargo xtask bench podlist`
// (tests/src/bin/podlist-bench.rs, issue 14): what SPIRE's k8s WorkloadAttestor does with a
// kubelet /pods body, re-implemented (not copied) from spiffe/spire tag v1.15.3
// (commit af69d3fa):
//
//   - pkg/agent/plugin/workloadattestor/k8s/podlistfetcher.go, podListFetcher.parsePodList:
//     once per kubelet answer, a new fastjson.Parser, ParseBytes of the whole body, the body
//     must be an object, its "items" an array (or null), and a map pod UID → *fastjson.Value
//     (pods without metadata.uid skipped). See parsePodList below.
//   - pkg/agent/plugin/workloadattestor/k8s/k8s.go, Plugin.attestByPIDReference: per
//     attestation, over every entry of that map (skipping other UIDs when the cgroup gave a
//     pod UID), re-serialise the pod (Value.MarshalTo into a scratch buffer kept for the
//     attestation), encoding/json-decode it, look the container up (lookUpContainerInPod: the
//     URL-parsed containerID's host compared exactly, containerStatuses then
//     initContainerStatuses), then getSelectorValuesFromPodInfo and
//     getSelectorValuesFromWorkloadContainerStatus (getPodImageIdentifiers for the images);
//     two pods yielding selectors is an error. See attest below.
//
// Configuration modelled: the defaults (container selectors on, no namespace labels, no
// sigstore). The selectors are built in SPIRE's order, unsorted; they are sorted only when
// returned for the check (op "check"), outside any timing.
//
// A LOWER BOUND of SPIRE's cost: SPIRE decodes each candidate pod into a full corev1.Pod
// (every spec and status field: env, probes, resources, volumes, container states…), while
// pod here has only the fields the selectors read; encoding/json still scans the rest but
// allocates and fills nothing for it. The fastjson here is Debian's 1.6.3 (SPIRE v1.15.3 pins
// 1.6.10; the parser and MarshalTo are the same algorithm). Nothing of SPIRE's fetcher
// goroutine, logging or gRPC is included.
//
// Protocol: one JSON command per stdin line, one JSON answer per stdout line, so the bench
// alternates rounds without process start-up. Targets are {"pod_uid": "...",
// "container_id": "..."} (pod_uid "" = not known: every pod is examined, as SPIRE does).
//
//	{"op":"load","files":[path,...]}            read the bodies (kept in memory)
//	{"op":"check","file":i,"targets":[...]}     sorted selectors per target (null: not found)
//	{"op":"first","file":i,"targets":[...]}     per target: a fresh parse of body i, then
//	                                            one attestation (the first on a new list)
//	{"op":"cache","file":i}                     parse body i and keep it as the cached list
//	{"op":"attest","targets":[...]}             per target: one attestation on the cached list
//	{"op":"burst","file":i,"targets":[...]}     one parse of body i, then every target
//
// Timed answers carry wall_ns (per target, or the one burst), cpu_ns (getrusage RUSAGE_SELF
// user+system delta over the whole batch: every thread of the process, so garbage collection
// is included, as SPIRE pays it) and selectors (how many values were built, a check that the
// work was done). Before each timed batch the heap is collected (runtime.GC, untimed), so one
// batch's garbage is not charged to the next; collections the batch itself triggers count.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"runtime"
	"sort"
	"syscall"
	"time"

	"github.com/valyala/fastjson"
)

// podList is what SPIRE's fetcher keeps per kubelet answer: pod UID → the pod, still in
// fastjson form.
type podList map[string]*fastjson.Value

// parsePodList mirrors podListFetcher.parsePodList: a new parser per answer (its values live
// as long as the map), the whole body parsed, pods keyed by metadata.uid.
func parsePodList(body []byte) (podList, error) {
	var parser fastjson.Parser
	list, err := parser.ParseBytes(body)
	if err != nil {
		return nil, fmt.Errorf("unable to parse kubelet response: %w", err)
	}
	if list.Type() != fastjson.TypeObject {
		return nil, errors.New("invalid kubelet response: expected an object")
	}
	itemsValue := list.Get("items")
	if itemsValue == nil {
		return nil, errors.New("invalid kubelet response: expected an items array")
	}
	var items []*fastjson.Value
	switch itemsValue.Type() {
	case fastjson.TypeArray:
		items = itemsValue.GetArray()
	case fastjson.TypeNull:
	default:
		return nil, errors.New("invalid kubelet response: expected an items array")
	}
	pods := make(podList, len(items))
	for _, value := range items {
		uid := string(value.Get("metadata", "uid").GetStringBytes())
		if uid == "" {
			continue
		}
		pods[uid] = value
	}
	return pods, nil
}

// pod has the corev1.Pod fields SPIRE's selectors read, under the same JSON names.
type pod struct {
	Metadata struct {
		Name            string            `json:"name"`
		Namespace       string            `json:"namespace"`
		UID             string            `json:"uid"`
		Labels          map[string]string `json:"labels"`
		OwnerReferences []struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"ownerReferences"`
	} `json:"metadata"`
	Spec struct {
		ServiceAccountName string `json:"serviceAccountName"`
		NodeName           string `json:"nodeName"`
	} `json:"spec"`
	Status podStatus `json:"status"`
}

type podStatus struct {
	ContainerStatuses     []containerStatus `json:"containerStatuses"`
	InitContainerStatuses []containerStatus `json:"initContainerStatuses"`
}

type containerStatus struct {
	Name        string `json:"name"`
	Image       string `json:"image"`
	ImageID     string `json:"imageID"`
	ContainerID string `json:"containerID"`
}

type target struct {
	PodUID      string `json:"pod_uid"`
	ContainerID string `json:"container_id"`
}

// attest mirrors the search loop of Plugin.attestByPIDReference for one pod list (one
// attempt), with the default configuration.
func attest(pods podList, t target) ([]string, error) {
	podKnown := t.PodUID != ""
	var scratch []byte
	var result []string
	for podKey, podValue := range pods {
		if podKnown && podKey != t.PodUID {
			continue
		}
		scratch = podValue.MarshalTo(scratch[:0])
		p := new(pod)
		if err := json.Unmarshal(scratch, &p); err != nil {
			return nil, fmt.Errorf("unable to decode pod info from kubelet response: %v", err)
		}
		var selectorValues []string
		if status, found := lookUpContainerInPod(t.ContainerID, p.Status); found {
			selectorValues = append(selectorValues, podSelectors(p)...)
			selectorValues = append(selectorValues, containerSelectors(status)...)
		}
		if len(selectorValues) > 0 {
			if result != nil {
				return nil, errors.New("two pods found with same container Id")
			}
			result = selectorValues
		}
	}
	return result, nil
}

// lookUpContainerInPod mirrors SPIRE's function of that name.
func lookUpContainerInPod(containerID string, status podStatus) (*containerStatus, bool) {
	for _, lists := range [][]containerStatus{status.ContainerStatuses, status.InitContainerStatuses} {
		for _, status := range lists {
			if status.ContainerID == "" {
				continue
			}
			containerURL, err := url.Parse(status.ContainerID)
			if err != nil {
				continue
			}
			if containerID == containerURL.Host {
				return &status, true
			}
		}
	}
	return nil, false
}

// imageIdentifiers mirrors getPodImageIdentifiers: tag and digest, duplicates collapsed.
func imageIdentifiers(statuses ...containerStatus) map[string]struct{} {
	images := make(map[string]struct{}, 2*len(statuses))
	for _, s := range statuses {
		images[s.ImageID] = struct{}{}
		images[s.Image] = struct{}{}
	}
	return images
}

// podSelectors mirrors getSelectorValuesFromPodInfo.
func podSelectors(p *pod) []string {
	values := []string{
		fmt.Sprintf("sa:%s", p.Spec.ServiceAccountName),
		fmt.Sprintf("ns:%s", p.Metadata.Namespace),
		fmt.Sprintf("node-name:%s", p.Spec.NodeName),
		fmt.Sprintf("pod-uid:%s", p.Metadata.UID),
		fmt.Sprintf("pod-name:%s", p.Metadata.Name),
		fmt.Sprintf("pod-image-count:%d", len(p.Status.ContainerStatuses)),
		fmt.Sprintf("pod-init-image-count:%d", len(p.Status.InitContainerStatuses)),
	}
	for image := range imageIdentifiers(p.Status.ContainerStatuses...) {
		values = append(values, fmt.Sprintf("pod-image:%s", image))
	}
	for image := range imageIdentifiers(p.Status.InitContainerStatuses...) {
		values = append(values, fmt.Sprintf("pod-init-image:%s", image))
	}
	for k, v := range p.Metadata.Labels {
		values = append(values, fmt.Sprintf("pod-label:%s:%s", k, v))
	}
	for _, owner := range p.Metadata.OwnerReferences {
		values = append(values, fmt.Sprintf("pod-owner:%s:%s", owner.Kind, owner.Name))
		values = append(values, fmt.Sprintf("pod-owner-uid:%s:%s", owner.Kind, owner.UID))
	}
	return values
}

// containerSelectors mirrors getSelectorValuesFromWorkloadContainerStatus.
func containerSelectors(status *containerStatus) []string {
	values := []string{fmt.Sprintf("container-name:%s", status.Name)}
	for image := range imageIdentifiers(*status) {
		values = append(values, fmt.Sprintf("container-image:%s", image))
	}
	return values
}

// --- The command loop ----------------------------------------------------------------------

type command struct {
	Op      string   `json:"op"`
	Files   []string `json:"files"`
	File    int      `json:"file"`
	Targets []target `json:"targets"`
}

// timed is the answer to a timed batch.
type timed struct {
	WallNs    []int64 `json:"wall_ns"`
	CPUNs     int64   `json:"cpu_ns"`
	Selectors int     `json:"selectors"`
}

type state struct {
	bodies [][]byte
	cached podList
}

// cpuNs is the process's CPU time (user + system, all threads) in nanoseconds.
func cpuNs() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func (s *state) body(i int) []byte {
	if i < 0 || i >= len(s.bodies) {
		panic(fmt.Sprintf("no body %d (load it first)", i))
	}
	return s.bodies[i]
}

func mustAttest(pods podList, t target) int {
	values, err := attest(pods, t)
	if err != nil {
		panic(fmt.Sprintf("attest %+v: %v", t, err))
	}
	if values == nil {
		panic(fmt.Sprintf("attest %+v: container not in the list", t))
	}
	return len(values)
}

func mustParse(body []byte) podList {
	pods, err := parsePodList(body)
	if err != nil {
		panic(err)
	}
	return pods
}

func (s *state) run(c command) interface{} {
	switch c.Op {
	case "load":
		s.bodies = nil
		s.cached = nil
		sizes := []int{}
		for _, f := range c.Files {
			b, err := os.ReadFile(f)
			if err != nil {
				panic(err)
			}
			s.bodies = append(s.bodies, b)
			sizes = append(sizes, len(b))
		}
		return map[string]interface{}{"ok": true, "bytes": sizes}
	case "check":
		pods := mustParse(s.body(c.File))
		out := make([][]string, len(c.Targets))
		for i, t := range c.Targets {
			values, err := attest(pods, t)
			if err != nil {
				panic(fmt.Sprintf("attest %+v: %v", t, err))
			}
			sort.Strings(values)
			out[i] = values
		}
		return map[string]interface{}{"selectors": out}
	case "first":
		body := s.body(c.File)
		r := timed{WallNs: make([]int64, 0, len(c.Targets))}
		runtime.GC()
		cpu := cpuNs()
		for _, t := range c.Targets {
			start := time.Now()
			r.Selectors += mustAttest(mustParse(body), t)
			r.WallNs = append(r.WallNs, int64(time.Since(start)))
		}
		r.CPUNs = cpuNs() - cpu
		return r
	case "cache":
		s.cached = nil
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		s.cached = mustParse(s.body(c.File))
		runtime.GC()
		runtime.ReadMemStats(&after)
		return map[string]interface{}{
			"pods":       len(s.cached),
			"heap_bytes": int64(after.HeapAlloc) - int64(before.HeapAlloc),
		}
	case "attest":
		if s.cached == nil {
			panic("attest: no cached list (cache one first)")
		}
		r := timed{WallNs: make([]int64, 0, len(c.Targets))}
		runtime.GC()
		cpu := cpuNs()
		for _, t := range c.Targets {
			start := time.Now()
			r.Selectors += mustAttest(s.cached, t)
			r.WallNs = append(r.WallNs, int64(time.Since(start)))
		}
		r.CPUNs = cpuNs() - cpu
		return r
	case "burst":
		body := s.body(c.File)
		var r timed
		runtime.GC()
		cpu := cpuNs()
		start := time.Now()
		pods := mustParse(body)
		for _, t := range c.Targets {
			r.Selectors += mustAttest(pods, t)
		}
		r.WallNs = []int64{int64(time.Since(start))}
		r.CPUNs = cpuNs() - cpu
		return r
	default:
		panic(fmt.Sprintf("unknown op %q", c.Op))
	}
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	s := &state{}
	for in.Scan() {
		var c command
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			panic(fmt.Sprintf("bad command %q: %v", in.Text(), err))
		}
		if err := enc.Encode(s.run(c)); err != nil {
			panic(err)
		}
		if err := out.Flush(); err != nil {
			panic(err)
		}
	}
	if err := in.Err(); err != nil {
		panic(err)
	}
}
