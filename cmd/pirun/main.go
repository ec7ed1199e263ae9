// Command pirun runs many small containers with little overhead: no daemon,
// no shim, one shared read-only rootfs per image.
//
// This package only wires flags to the runtime, image and network packages;
// one file per verb.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/pirun/pirun/runtime"
)

func main() {
	// The re-executed container init must run before anything else.
	if runtime.IsInit() {
		runtime.Init()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		var ec exitCodeError
		if errors.As(err, &ec) {
			os.Exit(ec.code)
		}
		fmt.Fprintln(os.Stderr, "pirun:", err)
		os.Exit(125)
	}
}

// exitCodeError makes pirun exit with a code and no message: the exit code
// of a foreground container, or 1 after errors already printed.
type exitCodeError struct{ code int }

func (e exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }
