package image

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps pins the direction of imports: image never imports runtime or
// network, and stays clear of the containers/image transports that drag
// in containers/storage (the habit of go-containerregistry's depcheck).
func TestDeps(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("skipping: the go command is not on PATH")
	}
	out, err := exec.Command(gobin, "list", "-tags", "containers_image_openpgp", "-deps", "-f", "{{.ImportPath}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	forbidden := []string{
		"github.com/pirun/pirun/runtime",
		"github.com/pirun/pirun/network",
		"github.com/pirun/pirun/cmd",
		"github.com/opencontainers/runc",
		"github.com/containers/image/v5/transports/alltransports",
		"github.com/containers/image/v5/storage",
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("image depends on %s", dep)
			}
		}
		if dep == "github.com/containers/storage" {
			t.Errorf("image depends on %s", dep)
		}
	}
}
