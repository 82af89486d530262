// Package libyaml is libyaml's YAML scanner and parser as ported to Go by
// go-yaml, exposed as a stream of parse events. go.yaml.in/yaml/v3 parses
// with this very code but offers only a whole document's node tree, about
// 200 bytes per node: for a broker config of 100,000 bindings that is
// 250 MiB held at once, just to be walked once and dropped. Reading events
// instead, yamlconfig decodes a document into structs holding only the
// current path's events.
//
// apic.go, parserc.go, readerc.go, scannerc.go, yamlh.go and yamlprivateh.go
// are go.yaml.in/yaml/v3 v3.0.5's files of the same names, unchanged but for
// the package clause (their licence, MIT, is in LICENSE beside them, with
// the Apache licence of the rest of go-yaml); resolve.go is that module's file of that name (its unreachable failf a panic) with ResolveTag,
// tag resolution of plain scalars; events.go is this package's own API. To
// update, copy the files from a newer go.yaml.in/yaml/v3 the same way.
package libyaml
