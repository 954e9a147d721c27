package kit

import (
	"fmt"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"

	"github.com/ggnet/ggnet/internal/testenv"
)

// ManagerDefaults are the chart's defaults for the manager that change how
// it performs: --max-concurrent-reconciles and GOMEMLIMIT.
type ManagerDefaults struct {
	MaxConcurrentReconciles int
	GoMemLimit              string
}

// ChartManagerDefaults reads them from charts/ggnet/values.yaml, so that the
// benchmarks run what a default install runs.
func ChartManagerDefaults() (ManagerDefaults, error) {
	p := filepath.Join(testenv.RepoRoot(), "charts", "ggnet", "values.yaml")
	b, err := os.ReadFile(p)
	if err != nil {
		return ManagerDefaults{}, err
	}
	var v struct {
		Manager struct {
			MaxConcurrentReconciles int    `json:"maxConcurrentReconciles"`
			GoMemLimit              string `json:"goMemLimit"`
		} `json:"manager"`
	}
	if err := yaml.Unmarshal(b, &v); err != nil {
		return ManagerDefaults{}, fmt.Errorf("%s: %w", p, err)
	}
	if v.Manager.MaxConcurrentReconciles == 0 {
		return ManagerDefaults{}, fmt.Errorf("%s: no manager.maxConcurrentReconciles", p)
	}
	return ManagerDefaults{v.Manager.MaxConcurrentReconciles, v.Manager.GoMemLimit}, nil
}
