// Package templates holds the HTML pages the portal serves to browsers: the
// auto-submitting launch page, the pages that explain a failed launch, and
// the demo portal and module. They are embedded in the binary.
package templates

import "embed"

// Files holds every page template (*.html).
//
//go:embed *.html
var Files embed.FS
