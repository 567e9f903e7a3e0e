package main

// Hand-written protobuf messages for the SPIRE plugin services, in the form golang/protobuf
// 1.3 (Debian's golang-goprotobuf-dev) marshals by reflection over struct tags. Field numbers
// match attestor/proto/*.proto (and go-spiffe's broker API for the references). No generated
// code: Debian ships no SPIRE SDK stubs.

import (
	"github.com/golang/protobuf/proto"
	"github.com/golang/protobuf/ptypes/any"
)

type CoreConfiguration struct {
	TrustDomain string `protobuf:"bytes,1,opt,name=trust_domain,json=trustDomain,proto3"`
}

func (m *CoreConfiguration) Reset()         { *m = CoreConfiguration{} }
func (m *CoreConfiguration) String() string { return proto.CompactTextString(m) }
func (*CoreConfiguration) ProtoMessage()    {}

type ConfigureRequest struct {
	CoreConfiguration *CoreConfiguration `protobuf:"bytes,1,opt,name=core_configuration,json=coreConfiguration,proto3"`
	HclConfiguration  string             `protobuf:"bytes,2,opt,name=hcl_configuration,json=hclConfiguration,proto3"`
}

func (m *ConfigureRequest) Reset()         { *m = ConfigureRequest{} }
func (m *ConfigureRequest) String() string { return proto.CompactTextString(m) }
func (*ConfigureRequest) ProtoMessage()    {}

type ConfigureResponse struct{}

func (m *ConfigureResponse) Reset()         { *m = ConfigureResponse{} }
func (m *ConfigureResponse) String() string { return proto.CompactTextString(m) }
func (*ConfigureResponse) ProtoMessage()    {}

type ValidateResponse struct {
	Valid bool     `protobuf:"varint,1,opt,name=valid,proto3"`
	Notes []string `protobuf:"bytes,2,rep,name=notes,proto3"`
}

func (m *ValidateResponse) Reset()         { *m = ValidateResponse{} }
func (m *ValidateResponse) String() string { return proto.CompactTextString(m) }
func (*ValidateResponse) ProtoMessage()    {}

type InitRequest struct {
	HostServiceNames []string `protobuf:"bytes,1,rep,name=host_service_names,json=hostServiceNames,proto3"`
}

func (m *InitRequest) Reset()         { *m = InitRequest{} }
func (m *InitRequest) String() string { return proto.CompactTextString(m) }
func (*InitRequest) ProtoMessage()    {}

type InitResponse struct {
	PluginServiceNames []string `protobuf:"bytes,1,rep,name=plugin_service_names,json=pluginServiceNames,proto3"`
}

func (m *InitResponse) Reset()         { *m = InitResponse{} }
func (m *InitResponse) String() string { return proto.CompactTextString(m) }
func (*InitResponse) ProtoMessage()    {}

type DeinitRequest struct{}

func (m *DeinitRequest) Reset()         { *m = DeinitRequest{} }
func (m *DeinitRequest) String() string { return proto.CompactTextString(m) }
func (*DeinitRequest) ProtoMessage()    {}

type DeinitResponse struct{}

func (m *DeinitResponse) Reset()         { *m = DeinitResponse{} }
func (m *DeinitResponse) String() string { return proto.CompactTextString(m) }
func (*DeinitResponse) ProtoMessage()    {}

type AttestRequest struct {
	Pid int32 `protobuf:"varint,1,opt,name=pid,proto3"`
}

func (m *AttestRequest) Reset()         { *m = AttestRequest{} }
func (m *AttestRequest) String() string { return proto.CompactTextString(m) }
func (*AttestRequest) ProtoMessage()    {}

type AttestResponse struct {
	SelectorValues []string `protobuf:"bytes,1,rep,name=selector_values,json=selectorValues,proto3"`
}

func (m *AttestResponse) Reset()         { *m = AttestResponse{} }
func (m *AttestResponse) String() string { return proto.CompactTextString(m) }
func (*AttestResponse) ProtoMessage()    {}

// Metrics host service (served by this host behind broker ID 1, as the agent does).

type Label struct {
	Name  string `protobuf:"bytes,1,opt,name=name,proto3"`
	Value string `protobuf:"bytes,2,opt,name=value,proto3"`
}

func (m *Label) Reset()         { *m = Label{} }
func (m *Label) String() string { return proto.CompactTextString(m) }
func (*Label) ProtoMessage()    {}

type IncrCounterRequest struct {
	Key    []string `protobuf:"bytes,1,rep,name=key,proto3"`
	Val    float32  `protobuf:"fixed32,2,opt,name=val,proto3"`
	Labels []*Label `protobuf:"bytes,3,rep,name=labels,proto3"`
}

func (m *IncrCounterRequest) Reset()         { *m = IncrCounterRequest{} }
func (m *IncrCounterRequest) String() string { return proto.CompactTextString(m) }
func (*IncrCounterRequest) ProtoMessage()    {}

type MeasureSinceRequest struct {
	Key    []string `protobuf:"bytes,1,rep,name=key,proto3"`
	Time   int64    `protobuf:"varint,2,opt,name=time,proto3"`
	Labels []*Label `protobuf:"bytes,3,rep,name=labels,proto3"`
}

func (m *MeasureSinceRequest) Reset()         { *m = MeasureSinceRequest{} }
func (m *MeasureSinceRequest) String() string { return proto.CompactTextString(m) }
func (*MeasureSinceRequest) ProtoMessage()    {}

// AttestReference (spire-plugin-sdk v1.15: spire.plugin.agent.workloadattestor.v1), the RPC
// the agent's Broker API (and its V1.Attest fallback) calls.

type AttestReferenceRequest struct {
	Reference *any.Any `protobuf:"bytes,1,opt,name=reference,proto3"`
}

func (m *AttestReferenceRequest) Reset()         { *m = AttestReferenceRequest{} }
func (m *AttestReferenceRequest) String() string { return proto.CompactTextString(m) }
func (*AttestReferenceRequest) ProtoMessage()    {}

type AttestReferenceResponse struct {
	SelectorValues []string `protobuf:"bytes,1,rep,name=selector_values,json=selectorValues,proto3"`
}

func (m *AttestReferenceResponse) Reset()         { *m = AttestReferenceResponse{} }
func (m *AttestReferenceResponse) String() string { return proto.CompactTextString(m) }
func (*AttestReferenceResponse) ProtoMessage()    {}

// go-spiffe's broker references (exp/proto/spiffe/broker/api.proto, package spiffe.broker),
// packed into google.protobuf.Any as type.googleapis.com/spiffe.broker.<Name>.

const brokerTypeURLPrefix = "type.googleapis.com/spiffe.broker."

type WorkloadPIDReference struct {
	Pid int32 `protobuf:"varint,1,opt,name=pid,proto3"`
}

func (m *WorkloadPIDReference) Reset()         { *m = WorkloadPIDReference{} }
func (m *WorkloadPIDReference) String() string { return proto.CompactTextString(m) }
func (*WorkloadPIDReference) ProtoMessage()    {}

type KubernetesObjectType struct {
	Plural string `protobuf:"bytes,1,opt,name=plural,proto3"`
	Group  string `protobuf:"bytes,2,opt,name=group,proto3"`
}

func (m *KubernetesObjectType) Reset()         { *m = KubernetesObjectType{} }
func (m *KubernetesObjectType) String() string { return proto.CompactTextString(m) }
func (*KubernetesObjectType) ProtoMessage()    {}

type KubernetesObjectKey struct {
	Namespace string `protobuf:"bytes,1,opt,name=namespace,proto3"`
	Name      string `protobuf:"bytes,2,opt,name=name,proto3"`
}

func (m *KubernetesObjectKey) Reset()         { *m = KubernetesObjectKey{} }
func (m *KubernetesObjectKey) String() string { return proto.CompactTextString(m) }
func (*KubernetesObjectKey) ProtoMessage()    {}

type KubernetesObjectReference struct {
	Type *KubernetesObjectType `protobuf:"bytes,1,opt,name=type,proto3"`
	Key  *KubernetesObjectKey  `protobuf:"bytes,2,opt,name=key,proto3"`
	Uid  string                `protobuf:"bytes,3,opt,name=uid,proto3"`
}

func (m *KubernetesObjectReference) Reset()         { *m = KubernetesObjectReference{} }
func (m *KubernetesObjectReference) String() string { return proto.CompactTextString(m) }
func (*KubernetesObjectReference) ProtoMessage()    {}

// packBroker packs a broker reference as anypb.New does (the type URL of its full name).
func packBroker(name string, m proto.Message) (*any.Any, error) {
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	return &any.Any{TypeUrl: brokerTypeURLPrefix + name, Value: b}, nil
}
