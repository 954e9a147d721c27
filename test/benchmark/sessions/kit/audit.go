package kit

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Audit turns on kube-apiserver's audit log of writes (create, update,
// patch, delete) in dir: with bodies, only the request bodies of GGnet's own
// resources are logged (its CRs hold no credential); every other write,
// Secrets among them, is logged as metadata only (who, what, when).
// Reads are not logged. It returns the log's path.
func Audit(e *envtest.Environment, dir string, bodies bool) (string, error) {
	level := "Metadata"
	if bodies {
		level = "Request"
	}
	policy := `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: ` + level + `
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
  resources: [{group: "boot.ggnet.io"}]
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
`
	pf := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(pf, []byte(policy), 0o600); err != nil {
		return "", err
	}
	lp := filepath.Join(dir, "audit.log")
	args := e.ControlPlane.GetAPIServer().Configure()
	args.Set("audit-policy-file", pf)
	args.Set("audit-log-path", lp)
	args.Set("audit-log-format", "json")
	return lp, nil
}

// AuditEvent is one write as the audit log shows it.
type AuditEvent struct {
	User, UserAgent                         string
	Verb                                    string
	Group, Resource, Subresource, Namespace string
	Name                                    string
	Code                                    int
	// Received is when kube-apiserver got the request, Done when it
	// answered.
	Received, Done time.Time
	// Body is the request body (GGnet's resources, with bodies only).
	Body json.RawMessage
}

// What is "verb resource[/subresource]".
func (e AuditEvent) What() string {
	r := e.Resource
	if e.Subresource != "" {
		r += "/" + e.Subresource
	}
	return e.Verb + " " + r
}

// ReadAudit reads the audit log's ResponseComplete events.
func ReadAudit(path string) ([]AuditEvent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []AuditEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var raw struct {
			Stage string `json:"stage"`
			Verb  string `json:"verb"`
			User  struct {
				Username string `json:"username"`
			} `json:"user"`
			UserAgent string `json:"userAgent"`
			ObjectRef struct {
				Resource    string `json:"resource"`
				Namespace   string `json:"namespace"`
				Name        string `json:"name"`
				APIGroup    string `json:"apiGroup"`
				Subresource string `json:"subresource"`
			} `json:"objectRef"`
			ResponseStatus struct {
				Code int `json:"code"`
			} `json:"responseStatus"`
			RequestObject json.RawMessage `json:"requestObject"`
			Received      time.Time       `json:"requestReceivedTimestamp"`
			Stage2        time.Time       `json:"stageTimestamp"`
		}
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil || raw.Stage != "ResponseComplete" {
			continue
		}
		out = append(out, AuditEvent{User: raw.User.Username, UserAgent: raw.UserAgent, Verb: raw.Verb,
			Group: raw.ObjectRef.APIGroup, Resource: raw.ObjectRef.Resource, Subresource: raw.ObjectRef.Subresource,
			Namespace: raw.ObjectRef.Namespace, Name: raw.ObjectRef.Name, Code: raw.ResponseStatus.Code,
			Received: raw.Received, Done: raw.Stage2, Body: raw.RequestObject})
	}
	return out, sc.Err()
}

// Agent is the program part of a user agent ("manager/v0.0.0 (linux/amd64)
// kubernetes/$Format" is "manager").
func Agent(userAgent string) string {
	a, _, _ := strings.Cut(userAgent, " ")
	a, _, _ = strings.Cut(a, "/")
	return a
}
