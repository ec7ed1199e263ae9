package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestOutputFormat(t *testing.T) {
	for format, ok := range map[string]bool{"table": true, "json": true, "{{.IP}}": true, "{{.IP": false, "yaml": true} {
		o := output{format: format}
		if err := o.check(); (err == nil) != ok {
			t.Errorf("--format %q: %v, want ok=%v", format, err, ok)
		}
	}
}

// Flags after the image belong to the container's command, not to pirun.
func TestArgumentParsing(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // substring of the error, "" for none expected before running
	}{
		{[]string{"spawn"}, "requires at least 1 arg"},
		{[]string{"spawn", "-n", "x", "img"}, "invalid argument"},
		{[]string{"stop", "--all", "web"}, "not both"},
		{[]string{"rm"}, "--all"},
		{[]string{"stop", "-t", "-1", "web"}, "negative"},
		{[]string{"logs"}, "accepts 1 arg"},
		{[]string{"ps", "--format", "{{"}, "--format"},
		{[]string{"nosuchverb"}, "unknown command"},
	} {
		cmd := newRootCmd()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		dir := t.TempDir()
		cmd.SetArgs(append([]string{"--root", dir + "/root", "--state", dir + "/state"}, tc.args...))
		err := cmd.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pirun %s: %v, want an error with %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}
