package yamlconfig

import (
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Line returns the line of the field at path (as Key and the decoder write
// paths: a.b[2].c, m["key"]), or of the deepest part of it present in the
// file: a missing field is located at the mapping that lacks it. It returns 0
// when not even the first part is in the file.
func (d *Document) Line(path string) int {
	if d.root == nil && d.raw != nil {
		// Decoded without a tree: build it now, on the error path only.
		var doc yaml.Node
		if err := yaml.Unmarshal(d.raw, &doc); err == nil && doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
			d.root = doc.Content[0]
		}
		d.raw = nil
	}
	n, line := d.root, 0
	for n != nil && path != "" {
		var key string
		idx := -1
		switch {
		case path[0] == '.':
			path = path[1:]
			continue
		case strings.HasPrefix(path, `["`):
			q, err := strconv.QuotedPrefix(path[1:])
			if err != nil || !strings.HasPrefix(path[1+len(q):], "]") {
				return line
			}
			key, _ = strconv.Unquote(q)
			path = path[1+len(q)+1:]
		case path[0] == '[':
			end := strings.IndexByte(path, ']')
			i, err := strconv.Atoi(path[1:max(end, 1)])
			if end < 0 || err != nil {
				return line
			}
			idx, path = i, path[end+1:]
		default:
			end := strings.IndexAny(path, ".[")
			if end < 0 {
				end = len(path)
			}
			key, path = path[:end], path[end:]
		}
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		var next *yaml.Node
		switch {
		case idx >= 0 && n.Kind == yaml.SequenceNode && idx < len(n.Content):
			next = n.Content[idx]
			line = next.Line
		case idx < 0 && n.Kind == yaml.MappingNode:
			k, v := lookup(n, key, 0)
			if k != nil {
				next, line = v, k.Line
			}
		}
		n = next
	}
	return line
}

// lookup finds key in mapping n, or in the mappings it merges with "<<".
func lookup(n *yaml.Node, key string, depth int) (k, v *yaml.Node) {
	if depth > 16 {
		return nil, nil
	}
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		switch k := n.Content[i]; {
		case k.Kind == yaml.ScalarNode && k.Tag == tagMerge:
			merges = append(merges, n.Content[i+1])
		case k.Kind == yaml.ScalarNode && k.Value == key:
			return k, n.Content[i+1]
		}
	}
	for _, m := range merges {
		if m.Kind == yaml.AliasNode && m.Alias != nil {
			m = m.Alias
		}
		sources := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			sources = m.Content
		}
		for _, src := range sources {
			if src.Kind == yaml.AliasNode && src.Alias != nil {
				src = src.Alias
			}
			if src.Kind == yaml.MappingNode {
				if k, v := lookup(src, key, depth+1); k != nil {
					return k, v
				}
			}
		}
	}
	return nil, nil
}
