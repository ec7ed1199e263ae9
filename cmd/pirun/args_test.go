package main

import (
	"bytes"
	"context"
	"io"
	"os"
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
		{[]string{"stop", "--all", "web"}, "only one"},
		{[]string{"rm", "--all", "--group", "web"}, "only one"},
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

// The config file sets defaults; flags and environment win over it.
func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	conf := dir + "/config.json"
	os.WriteFile(conf, []byte(`{"root": "`+dir+`/from-config", "state": "`+dir+`/state", "subnet": "10.200.0.0/16"}`), 0o600)
	run := func(args ...string) error {
		cmd := newRootCmd()
		cmd.SetOut(io.Discard)
		cmd.SetArgs(args)
		return cmd.ExecuteContext(context.Background())
	}
	if err := run("--config", conf, "images"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir + "/from-config"); err != nil {
		t.Errorf("the config's root was not used: %v", err)
	}
	if err := run("--config", conf, "--root", dir+"/from-flag", "images"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir + "/from-flag"); err != nil {
		t.Errorf("--root did not win over the config: %v", err)
	}
	t.Setenv("PIRUN_ROOT", dir+"/from-env")
	if err := run("--config", conf, "images"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir + "/from-env"); err != nil {
		t.Errorf("PIRUN_ROOT did not win over the config: %v", err)
	}
	os.WriteFile(conf, []byte(`{"rooot": "/x"}`), 0o600)
	if err := run("--config", conf, "images"); err == nil || !strings.Contains(err.Error(), "rooot") {
		t.Errorf("unknown key: %v", err)
	}
	if err := run("--config", dir+"/missing.json", "images"); err == nil {
		t.Error("a missing config file named with --config is no error")
	}
	os.WriteFile(conf, []byte(`{"subnet": "10.300.0.0/16", "root": "`+dir+`/r"}`), 0o600)
	if err := run("--config", conf, "images"); err == nil || !strings.Contains(err.Error(), "10.300") {
		t.Errorf("bad subnet: %v", err)
	}
}
