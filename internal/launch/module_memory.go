package launch

import (
	"context"
	"sync"
)

// moduleMemory remembers the modules the service read from its source,
// so that a launch does not read the registry every time. What it
// remembers may be out of date — another instance may have changed or
// removed a module — which is safe because every statement that writes a
// registry launch checks that the module it copied is still registered
// so (sqlModuleStillCurrent): when it is not, nothing is stored, the
// module is forgotten and the request resolved again from the source.
type moduleMemory struct {
	source ModuleSource

	mu      sync.Mutex
	modules map[string]Module // by slug
}

// maxRememberedModules bounds the memory; modules beyond it are read from
// the source every time.
const maxRememberedModules = 10_000

func newModuleMemory(source ModuleSource) *moduleMemory {
	return &moduleMemory{source: source, modules: map[string]Module{}}
}

// Module returns the module with that slug, from memory or else from the
// source (ErrModuleNotFound when there is none; that is not remembered).
func (m *moduleMemory) Module(ctx context.Context, slug string) (Module, error) {
	m.mu.Lock()
	mod, ok := m.modules[slug]
	m.mu.Unlock()
	if ok {
		return mod, nil
	}
	mod, err := m.source.Module(ctx, slug)
	if err != nil {
		return Module{}, err
	}
	m.mu.Lock()
	if len(m.modules) < maxRememberedModules {
		m.modules[slug] = mod
	}
	m.mu.Unlock()
	return mod, nil
}

// fresh reads the module from the source, whatever memory holds, and
// remembers what it read (or forgets the module when there is none).
func (m *moduleMemory) fresh(ctx context.Context, slug string) (Module, error) {
	m.forget(slug)
	return m.Module(ctx, slug)
}

// forget drops a module from memory: it is read from the source next time.
func (m *moduleMemory) forget(slug string) {
	m.mu.Lock()
	delete(m.modules, slug)
	m.mu.Unlock()
}
