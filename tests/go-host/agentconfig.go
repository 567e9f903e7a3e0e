package main

// The agent configuration file, read as the SPIRE agent reads it (v1.15.3):
// cmd/spire-agent/cli/run/run.go ParseConfig decodes the file with HCL v1 into a struct
// whose `plugins` field is kept as an ast.Node; pkg/common/catalog/config.go
// PluginConfigsFromHCLNode decodes that node into a list of type → name → plugin maps, and
// pluginConfigFromHCL prints `plugin_data` back to text with printer.DefaultConfig (the
// text the plugin's Configure receives). HCL v1 is Debian's golang-github-hashicorp-hcl-dev,
// the library SPIRE uses.

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"github.com/hashicorp/hcl"
	"github.com/hashicorp/hcl/hcl/ast"
	"github.com/hashicorp/hcl/hcl/printer"
)

type agentFile struct {
	Plugins ast.Node `hcl:"plugins"`
}

type pluginEntry struct {
	PluginCmd      string   `hcl:"plugin_cmd"`
	PluginChecksum string   `hcl:"plugin_checksum"`
	PluginData     ast.Node `hcl:"plugin_data"`
}

// agentPlugin returns plugin_cmd, plugin_checksum and the plugin_data text of the
// `pluginType "name"` entry of the agent configuration at path.
func agentPlugin(path, pluginType, name string) (result, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f agentFile
	if err := hcl.Decode(&f, string(data)); err != nil {
		return nil, fmt.Errorf("unable to decode configuration: %w", err)
	}
	if f.Plugins == nil {
		return nil, errors.New("no plugins section")
	}
	var maps []map[string]map[string]pluginEntry
	if err := hcl.DecodeObject(&maps, f.Plugins); err != nil {
		return nil, fmt.Errorf("failed to decode plugins config: %w", err)
	}
	for _, m := range maps {
		entry, ok := m[pluginType][name]
		if !ok {
			continue
		}
		var buf bytes.Buffer
		if entry.PluginData != nil {
			if err := printer.DefaultConfig.Fprint(&buf, entry.PluginData); err != nil {
				return nil, err
			}
		}
		return result{
			"plugin_cmd":      entry.PluginCmd,
			"plugin_checksum": entry.PluginChecksum,
			"plugin_data":     buf.String(),
		}, nil
	}
	return nil, fmt.Errorf("no %s %q plugin in %s", pluginType, name, path)
}
