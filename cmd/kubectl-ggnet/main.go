// Command kubectl-ggnet is the kubectl plugin for GGnet: `kubectl ggnet
// start|stop|wake|ls|active|script|timeline|stats|room|images|pin|follow|capture`.
// It uses the user's kubeconfig and RBAC; the logic is in internal/ggctl.
//
//	go install ./cmd/kubectl-ggnet   # from a checkout
//
// (go install github.com/ggnet/ggnet/cmd/kubectl-ggnet@latest needs a go.mod
// without replace directives; see docs/sessions.md.)
//
// Exit codes: 0 ok, 1 error, 2 usage.
package main

import (
	"os"

	"github.com/ggnet/ggnet/internal/ggctl"
)

func main() {
	os.Exit(ggctl.Main(os.Args[1:], ggctl.StdStreams()))
}
