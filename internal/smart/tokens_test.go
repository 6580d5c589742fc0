package smart

import "github.com/ehealth-nl/portal/internal/fhirdomain"

// The FHIR reader takes its access tokens from this client.
var _ fhirdomain.Tokens = (*Client)(nil)
