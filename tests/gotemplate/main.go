// Test-only reference renderer for Ollama TEMPLATEs.
//
// It renders a Go text/template the way Ollama's template package does (template/template.go at the commit named in
// shared/reference/ollama.md), using only the standard library so it builds offline:
//
//   - parse with option missingkey=zero and Ollama's extra functions (json, currentDate, yesterdayDate,
//     toTypeScriptType);
//   - if the template mentions neither .Messages nor .Response, a {{ .Response }} action is appended;
//   - messages mode (the template mentions Messages): data is System (every system message joined by "\n\n"),
//     Messages (consecutive messages of one role merged with "\n\n", except tool messages), Tools, Response "",
//     Think, ThinkLevel, IsThinkSet;
//   - legacy mode: the template runs once per user/assistant turn with System/Prompt/Response, and in the final
//     turn everything after the first .Response field is cut;
//   - prompt+suffix (fill-in-the-middle) mode.
//
// Input (stdin): {"jobs": [{"template", "messages", "tools", "prompt", "suffix", "think", "think_level",
// "is_think_set", "force_legacy"}]}. Output (stdout): {"results": [{"output": "..."} | {"error": "..."}]}.
// One process renders a whole corpus, so the Python side pays the start-up cost once.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

// ---- data shapes, named and nested as Ollama's api package names them (templates address fields by name) ----

type ToolCallFunctionArguments map[string]any

// String prints arguments as JSON, as Ollama's type does, so {{ .Function.Arguments }} renders JSON.
func (a ToolCallFunctionArguments) String() string {
	b, _ := json.Marshal(map[string]any(a))
	return string(b)
}

type ToolCallFunction struct {
	Index     int                       `json:"index"`
	Name      string                    `json:"name"`
	Arguments ToolCallFunctionArguments `json:"arguments"`
}

type ToolCall struct {
	ID       string           `json:"id"`
	Function ToolCallFunction `json:"function"`
}

type Message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	Thinking   string     `json:"thinking,omitempty"`
	Images     []string   `json:"images,omitempty"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolName   string     `json:"tool_name,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

type ToolProperty struct {
	Type        any    `json:"type"`
	Items       any    `json:"items"`
	Description string `json:"description"`
	Enum        []any  `json:"enum"`
}

type ToolFunctionParameters struct {
	Type       string                  `json:"type"`
	Defs       any                     `json:"$defs"`
	Items      any                     `json:"items"`
	Required   []string                `json:"required"`
	Properties map[string]ToolProperty `json:"properties"`
}

type ToolFunction struct {
	Name        string                 `json:"name"`
	Description string                 `json:"description"`
	Parameters  ToolFunctionParameters `json:"parameters"`
}

type Tool struct {
	Type     string       `json:"type"`
	Items    any          `json:"items"`
	Function ToolFunction `json:"function"`
}

type Job struct {
	Template    string    `json:"template"`
	Messages    []Message `json:"messages"`
	Tools       []Tool    `json:"tools"`
	Prompt      string    `json:"prompt"`
	Suffix      string    `json:"suffix"`
	Think       bool      `json:"think"`
	ThinkLevel  string    `json:"think_level"`
	IsThinkSet  bool      `json:"is_think_set"`
	ForceLegacy bool      `json:"force_legacy"`
}

type Result struct {
	Output *string `json:"output,omitempty"`
	Error  string  `json:"error,omitempty"`
}

// ---- template functions ----

// today is fixed by FORGE_TEMPLATE_DATE (YYYY-MM-DD) so renders are reproducible; otherwise the clock, as Ollama.
func today() time.Time {
	if s := os.Getenv("FORGE_TEMPLATE_DATE"); s != "" {
		if t, err := time.Parse("2006-01-02", s); err == nil {
			return t
		}
	}
	return time.Now()
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate":   func(args ...string) string { return today().Format("2006-01-02") },
	"yesterdayDate": func(args ...string) string { return today().AddDate(0, 0, -1).Format("2006-01-02") },
	// Our registry templates never render tools; a stub keeps templates that mention it parseable.
	"toTypeScriptType": func(v any) string { return "any" },
}

// ---- parse: the same tree touch-up Ollama applies ----

func identifiers(n parse.Node) []string {
	switch n := n.(type) {
	case *parse.ListNode:
		var out []string
		for _, c := range n.Nodes {
			out = append(out, identifiers(c)...)
		}
		return out
	case *parse.TemplateNode:
		if n.Pipe == nil {
			return nil
		}
		return identifiers(n.Pipe)
	case *parse.ActionNode:
		return identifiers(n.Pipe)
	case *parse.BranchNode:
		out := identifiers(n.Pipe)
		if n.List != nil {
			out = append(out, identifiers(n.List)...)
		}
		if n.ElseList != nil {
			out = append(out, identifiers(n.ElseList)...)
		}
		return out
	case *parse.IfNode:
		return identifiers(&n.BranchNode)
	case *parse.RangeNode:
		return identifiers(&n.BranchNode)
	case *parse.WithNode:
		return identifiers(&n.BranchNode)
	case *parse.PipeNode:
		if n == nil {
			return nil
		}
		var out []string
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				out = append(out, identifiers(a)...)
			}
		}
		return out
	case *parse.FieldNode:
		return n.Ident
	case *parse.VariableNode:
		return n.Ident
	}
	return nil
}

// vars: lower-cased identifiers over every template defined by the text (define blocks included).
func vars(t *template.Template) map[string]bool {
	set := map[string]bool{}
	for _, tt := range t.Templates() {
		if tt.Tree == nil || tt.Tree.Root == nil {
			continue
		}
		for _, n := range tt.Tree.Root.Nodes {
			for _, id := range identifiers(n) {
				set[strings.ToLower(id)] = true
			}
		}
	}
	return set
}

func responseAction() *parse.ActionNode {
	return &parse.ActionNode{
		NodeType: parse.NodeAction,
		Pipe: &parse.PipeNode{
			NodeType: parse.NodePipe,
			Cmds: []*parse.CommandNode{{
				NodeType: parse.NodeCommand,
				Args:     []parse.Node{&parse.FieldNode{NodeType: parse.NodeField, Ident: []string{"Response"}}},
			}},
		},
	}
}

func parseTemplate(s string) (*template.Template, error) {
	t, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(s)
	if err != nil {
		return nil, err
	}
	v := vars(t)
	if !v["messages"] && !v["response"] {
		t.Tree.Root.Nodes = append(t.Tree.Root.Nodes, responseAction())
	}
	return t, nil
}

// ---- legacy mode: cut everything after the first .Response field (final turn only) ----

// prune walks the tree in order; once a FieldNode naming Response has been kept, every node visited afterwards is
// dropped. Only action pipes and branch bodies are walked (branch conditions are left alone), as in Ollama.
func prune(n parse.Node, cut *bool) parse.Node {
	if *cut {
		return nil
	}
	switch t := n.(type) {
	case *parse.ListNode:
		var kept []parse.Node
		for _, c := range t.Nodes {
			if k := prune(c, cut); k != nil {
				kept = append(kept, k)
			}
		}
		t.Nodes = kept
		return t
	case *parse.IfNode:
		t.BranchNode = *(pruneBranch(&t.BranchNode, cut))
	case *parse.WithNode:
		t.BranchNode = *(pruneBranch(&t.BranchNode, cut))
	case *parse.RangeNode:
		t.BranchNode = *(pruneBranch(&t.BranchNode, cut))
	case *parse.ActionNode:
		p := prunePipe(t.Pipe, cut)
		if p == nil {
			return nil
		}
		t.Pipe = p
	case *parse.FieldNode:
		for _, id := range t.Ident {
			if id == "Response" {
				*cut = true
				return t
			}
		}
	}
	return n
}

func pruneBranch(b *parse.BranchNode, cut *bool) *parse.BranchNode {
	// A branch reached after the cut was already dropped by prune. A cut inside List leaves ElseList to a walker
	// that returns nil, and Ollama's type assertion on it panics: mirrored as an error.
	if l := prune(b.List, cut); l != nil {
		b.List = l.(*parse.ListNode)
	}
	if b.ElseList != nil {
		if *cut {
			panic("legacy template: else branch after .Response (Ollama panics here too)")
		}
		b.ElseList = prune(b.ElseList, cut).(*parse.ListNode)
	}
	return b
}

func prunePipe(p *parse.PipeNode, cut *bool) *parse.PipeNode {
	if *cut {
		return nil
	}
	var cmds []*parse.CommandNode
	for _, c := range p.Cmds {
		var args []parse.Node
		for _, a := range c.Args {
			if k := prune(a, cut); k != nil {
				args = append(args, k)
			}
		}
		if len(args) == 0 {
			return nil
		}
		c.Args = args
		cmds = append(cmds, c)
	}
	if len(cmds) == 0 {
		return nil
	}
	p.Cmds = cmds
	return p
}

// ---- execute ----

// collate merges consecutive messages of one role (tool messages excepted) with "\n\n" and gathers every system
// message's content, joined with "\n\n".
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var out []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			out[len(out)-1].Content += "\n\n" + msgs[i].Content
		} else {
			out = append(out, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), out
}

func execute(src string, j Job) (out string, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	t, err := parseTemplate(src)
	if err != nil {
		return "", err
	}
	// Roles are lower-cased when Ollama decodes a chat request.
	for i := range j.Messages {
		j.Messages[i].Role = strings.ToLower(j.Messages[i].Role)
	}
	system, messages := collate(j.Messages)
	var b bytes.Buffer
	think := map[string]any{"Think": j.Think, "ThinkLevel": j.ThinkLevel, "IsThinkSet": j.IsThinkSet}
	with := func(m map[string]any) map[string]any {
		for k, v := range think {
			m[k] = v
		}
		return m
	}
	if j.Prompt != "" && j.Suffix != "" {
		err = t.Execute(&b, with(map[string]any{"Prompt": j.Prompt, "Suffix": j.Suffix, "Response": ""}))
		return b.String(), err
	}
	if !j.ForceLegacy && vars(t)["messages"] {
		tools := j.Tools
		err = t.Execute(&b, with(map[string]any{"System": system, "Messages": messages, "Tools": tools, "Response": ""}))
		return b.String(), err
	}

	system = ""
	var prompt, response string
	flush := func() error {
		if err := t.Execute(&b, with(map[string]any{"System": system, "Prompt": prompt, "Response": response})); err != nil {
			return err
		}
		system, prompt, response = "", "", ""
		return nil
	}
	for _, m := range messages {
		switch m.Role {
		case "system":
			if prompt != "" || response != "" {
				if err := flush(); err != nil {
					return "", err
				}
			}
			system = m.Content
		case "user":
			if response != "" {
				if err := flush(); err != nil {
					return "", err
				}
			}
			prompt = m.Content
		case "assistant":
			response = m.Content
		}
	}
	// Final turn: a copy of the tree cut after .Response, run WITHOUT missingkey=zero or the extra functions,
	// exactly as Ollama builds it (a fresh template around the pruned tree).
	cut := false
	root := prune(t.Tree.Root.Copy(), &cut).(*parse.ListNode)
	final := template.Must(template.New("").AddParseTree("", &parse.Tree{Root: root}))
	if err := final.Execute(&b, with(map[string]any{"System": system, "Prompt": prompt, "Response": response})); err != nil {
		return "", err
	}
	return b.String(), nil
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "read stdin:", err)
		os.Exit(2)
	}
	var in struct {
		Jobs []Job `json:"jobs"`
	}
	if err := json.Unmarshal(data, &in); err != nil {
		fmt.Fprintln(os.Stderr, "decode input:", err)
		os.Exit(2)
	}
	results := make([]Result, len(in.Jobs))
	for i, j := range in.Jobs {
		out, err := execute(j.Template, j)
		if err != nil {
			results[i] = Result{Error: err.Error()}
		} else {
			s := out
			results[i] = Result{Output: &s}
		}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(map[string]any{"results": results}); err != nil {
		fmt.Fprintln(os.Stderr, "encode output:", err)
		os.Exit(2)
	}
}
