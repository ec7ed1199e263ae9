// Package depcheck pins the direction of imports between pirun's packages.
package depcheck

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func list(t *testing.T) []pkg {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("skipping: the go command is not on PATH")
	}
	cmd := exec.Command(gobin, "list", "-tags", "containers_image_openpgp", "-json", "github.com/pirun/pirun/...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list: %v", err)
	}
	return pkgs
}

const mod = "github.com/pirun/pirun/"

func within(dep, prefix string) bool { return dep == prefix || strings.HasPrefix(dep, prefix+"/") }

// Only runtime talks to libcontainer, whose Go API has no stability promise;
// image depends on neither runtime nor network; network knows nothing of
// images or containers; no library imports the CLI.
func TestImportDirection(t *testing.T) {
	rules := []struct {
		pkg       string
		forbidden []string
	}{
		{mod + "image", []string{mod + "runtime", mod + "network", mod + "cmd", "github.com/opencontainers/runc"}},
		{mod + "network", []string{mod + "runtime", mod + "image", mod + "cmd", "github.com/opencontainers/runc", "github.com/containers/image/v5"}},
		{mod + "runtime", []string{mod + "cmd"}},
	}
	pkgs := list(t)
	seen := map[string]bool{}
	for _, p := range pkgs {
		seen[p.ImportPath] = true
		for _, r := range rules {
			if p.ImportPath != r.pkg {
				continue
			}
			for _, dep := range p.Deps {
				for _, f := range r.forbidden {
					if within(dep, f) {
						t.Errorf("%s depends on %s", p.ImportPath, dep)
					}
				}
			}
		}
		// Direct imports of libcontainer: runtime only.
		if p.ImportPath == mod+"runtime" {
			continue
		}
		for _, imp := range p.Imports {
			if within(imp, "github.com/opencontainers/runc") {
				t.Errorf("%s imports %s: only runtime may import libcontainer", p.ImportPath, imp)
			}
		}
	}
	for _, r := range rules {
		if !seen[r.pkg] {
			t.Errorf("package %s not found by go list", r.pkg)
		}
	}
}
