package images

import (
	"context"

	"golang.org/x/sys/unix"
)

// recheckEvery bounds how much is written between two looks at the free
// space: other writers (sessions, other replicas) use it too.
const recheckEvery = 64 << 20

// spaceGuard keeps the store's writes out of the reserve.
type spaceGuard struct {
	ctx     context.Context
	dir     string
	reserve uint64
	// budget is what may still be written before the next look.
	budget int64
}

func (s *Store) guard(ctx context.Context) *spaceGuard {
	return &spaceGuard{ctx: ctx, dir: s.Dir, reserve: s.Reserve}
}

// Free returns the free space (for unprivileged use, as df shows it) of
// the file system holding dir.
func Free(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// room is the free space above the reserve (negative: inside it).
func (g *spaceGuard) room() (int64, error) {
	free, err := Free(g.dir)
	if err != nil {
		return 0, err
	}
	return int64(free) - int64(g.reserve), nil
}

// need refuses (DiskFull) when n more bytes would cut into the reserve.
func (g *spaceGuard) need(n int64) error {
	room, err := g.room()
	if err != nil {
		return err
	}
	if n > room {
		return g.full(n, room)
	}
	return nil
}

// take accounts for n bytes about to be written, looking at the free space
// again every recheckEvery bytes; it refuses (DiskFull) when they would cut
// into the reserve, and stops when the context ends.
func (g *spaceGuard) take(n int64) error {
	if err := g.ctx.Err(); err != nil {
		return err
	}
	if n <= g.budget {
		g.budget -= n
		return nil
	}
	room, err := g.room()
	if err != nil {
		return err
	}
	if n > room {
		return g.full(n, room)
	}
	g.budget = min(room, recheckEvery) - n
	return nil
}

// reset forgets the budget (a new attempt).
func (g *spaceGuard) reset() { g.budget = 0 }

func (g *spaceGuard) full(n, room int64) error {
	free := room + int64(g.reserve)
	return fail(ReasonDiskFull, "%s more would leave less than the %s reserved for running sessions (%s free)",
		gib(n), gib(int64(g.reserve)), gib(max(free, 0)))
}
