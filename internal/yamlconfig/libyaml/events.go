package libyaml

import (
	"errors"
	"strconv"
)

// Kind is the kind of an Event.
type Kind int8

// Event kinds, in the order a YAML stream presents them.
const (
	StreamStart Kind = iota + 1
	StreamEnd
	DocumentStart
	DocumentEnd
	Alias
	Scalar
	SequenceStart
	SequenceEnd
	MappingStart
	MappingEnd
)

// Style is a scalar's style: how it was written.
type Style int8

// Scalar styles.
const (
	Plain Style = iota
	SingleQuoted
	DoubleQuoted
	Literal
	Folded
)

// Event is one parse event. Its byte slices are valid until the next call
// of Parser.Next.
type Event struct {
	Kind Kind
	// Line and Column locate the event's start, from 1.
	Line, Column int
	// Anchor is the node's anchor (&name), or for an Alias the name it
	// refers to; nil if none.
	Anchor []byte
	// Tag is the node's explicit tag as resolved by the parser (for
	// example "tag:yaml.org,2002:str" for !!str); nil if none.
	Tag []byte
	// Value is a Scalar's value.
	Value []byte
	// Style is a Scalar's style.
	Style Style
	// Flow is set on a SequenceStart or MappingStart written in flow
	// style ([a, b] or {a: b}).
	Flow bool
}

// Parser reads the events of a YAML stream held in memory.
type Parser struct {
	p    yaml_parser_t
	ev   yaml_event_t
	done bool
	err  error
}

// NewParser returns a parser of data.
func NewParser(data []byte) *Parser {
	var p Parser
	yaml_parser_initialize(&p.p)
	if len(data) == 0 {
		data = []byte{'\n'}
	}
	yaml_parser_set_input_string(&p.p, data)
	return &p
}

// Next returns the next event. After the StreamEnd event, or once it has
// returned an error, it returns that again. Comments are skipped.
func (p *Parser) Next() (Event, error) {
	for {
		if p.err != nil {
			return Event{}, p.err
		}
		if p.done {
			return Event{Kind: StreamEnd}, nil
		}
		yaml_event_delete(&p.ev)
		if !yaml_parser_parse(&p.p, &p.ev) || p.p.error != yaml_NO_ERROR {
			p.err = p.failure()
			return Event{}, p.err
		}
		e := &p.ev
		out := Event{Line: e.start_mark.line + 1, Column: e.start_mark.column + 1, Anchor: e.anchor, Tag: e.tag}
		switch e.typ {
		case yaml_STREAM_START_EVENT:
			out.Kind = StreamStart
		case yaml_STREAM_END_EVENT:
			out.Kind, p.done = StreamEnd, true
		case yaml_DOCUMENT_START_EVENT:
			out.Kind = DocumentStart
		case yaml_DOCUMENT_END_EVENT:
			out.Kind = DocumentEnd
		case yaml_ALIAS_EVENT:
			out.Kind = Alias
		case yaml_SCALAR_EVENT:
			out.Kind, out.Value = Scalar, e.value
			switch s := e.scalar_style(); {
			case s&yaml_DOUBLE_QUOTED_SCALAR_STYLE != 0:
				out.Style = DoubleQuoted
			case s&yaml_SINGLE_QUOTED_SCALAR_STYLE != 0:
				out.Style = SingleQuoted
			case s&yaml_LITERAL_SCALAR_STYLE != 0:
				out.Style = Literal
			case s&yaml_FOLDED_SCALAR_STYLE != 0:
				out.Style = Folded
			}
		case yaml_SEQUENCE_START_EVENT:
			out.Kind, out.Flow = SequenceStart, e.sequence_style()&yaml_FLOW_SEQUENCE_STYLE != 0
		case yaml_SEQUENCE_END_EVENT:
			out.Kind = SequenceEnd
		case yaml_MAPPING_START_EVENT:
			out.Kind, out.Flow = MappingStart, e.mapping_style()&yaml_FLOW_MAPPING_STYLE != 0
		case yaml_MAPPING_END_EVENT:
			out.Kind = MappingEnd
		default: // yaml_TAIL_COMMENT_EVENT
			continue
		}
		return out, nil
	}
}

// failure is the parser's error, worded as go.yaml.in/yaml/v3 words it
// (without its "yaml: " prefix).
func (p *Parser) failure() error {
	line := 0
	switch {
	case p.p.context_mark.line != 0:
		line = p.p.context_mark.line
	case p.p.problem_mark.line != 0:
		line = p.p.problem_mark.line
	}
	if line != 0 && p.p.error == yaml_SCANNER_ERROR {
		line++ // scanner errors don't count the line before returning
	}
	msg := p.p.problem
	if msg == "" {
		msg = "unknown problem parsing YAML content"
	}
	if line != 0 {
		msg = "line " + strconv.Itoa(line) + ": " + msg
	}
	return errors.New(msg)
}
