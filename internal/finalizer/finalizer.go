// Package finalizer removes one finalizer from an object by a JSON patch
// that tests the list entry it removes: no resourceVersion, so a write of
// someone else's (a status patch, a label) in between does not make it
// conflict, and nothing but that entry changes. The storage agent and its
// stand-in release the storage finalizer this way.
package finalizer

import (
	"context"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// RemovePatch is the JSON patch that removes name from obj's finalizers, at
// the index it has in obj, provided that entry is still name on the server
// ("test" first: an index that moved makes the API server refuse the patch,
// 422 Invalid, instead of removing another finalizer). ok is false when obj
// lacks the finalizer.
func RemovePatch(obj client.Object, name string) (p client.Patch, ok bool) {
	for i, f := range obj.GetFinalizers() {
		if f != name {
			continue
		}
		v, _ := json.Marshal(name)
		body := fmt.Sprintf(`[{"op":"test","path":"/metadata/finalizers/%d","value":%s},{"op":"remove","path":"/metadata/finalizers/%d"}]`, i, v, i)
		return client.RawPatch(types.JSONPatchType, []byte(body)), true
	}
	return nil, false
}

// Remove removes name from obj's finalizers by RemovePatch, starting from
// obj as it is (a cached copy will do). When the list moved on the server
// (the test failed), it reads the object again with reader and retries, a
// few times. A missing object or finalizer is not an error. obj is left as
// the API server answered (or as last read).
func Remove(ctx context.Context, c client.Client, reader client.Reader, obj client.Object, name string) error {
	for attempt := 0; ; attempt++ {
		p, ok := RemovePatch(obj, name)
		if !ok {
			return nil
		}
		err := c.Patch(ctx, obj, p)
		if err == nil || apierrors.IsNotFound(err) {
			return nil
		}
		if !apierrors.IsInvalid(err) || attempt == 4 {
			return err
		}
		if err := reader.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return client.IgnoreNotFound(err)
		}
	}
}
