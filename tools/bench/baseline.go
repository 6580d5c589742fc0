package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ehealth-nl/portal/tools/internal/instance"
)

// buildBaseline builds the portal of git revision ref in a temporary
// worktree under work and returns the binary and the revision's short
// hash; the worktree is removed again.
func buildBaseline(ctx context.Context, repo, work, ref string) (bin, rev string, err error) {
	out, err := exec.CommandContext(ctx, "git", "-C", repo, "rev-parse", "--short", ref+"^{commit}").Output()
	if err != nil {
		return "", "", fmt.Errorf("BASELINE=%s is not a commit of this repository: %w", ref, err)
	}
	rev = strings.TrimSpace(string(out))
	tree := filepath.Join(work, "baseline-src")
	if out, err := exec.CommandContext(ctx, "git", "-C", repo, "worktree", "add", "--detach", tree, rev).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("git worktree add %s: %v: %s", rev, err, out)
	}
	defer func() {
		_ = exec.Command("git", "-C", repo, "worktree", "remove", "--force", tree).Run()
	}()
	dir := filepath.Join(work, "baseline-bin")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	bin, err = instance.Build(ctx, tree, dir)
	if err != nil {
		return "", "", fmt.Errorf("build the baseline %s: %w", rev, err)
	}
	return bin, rev, nil
}
