// Package api holds the portal's API contract, the OpenAPI document
// api/openapi.yaml, embedded so that the binary serves the document it was
// built and tested with (GET /api/v1/openapi.yaml).
package api

import _ "embed"

// OpenAPI is the OpenAPI 3.1 document of the portal's HTTP surface.
//
//go:embed openapi.yaml
var OpenAPI []byte
