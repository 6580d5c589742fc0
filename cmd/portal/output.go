package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// terminalSafe returns s with every character that could drive the
// operator's terminal written as a visible Go escape: control characters
// (ESC, BEL, CR, newline, tab, DEL, the C1 range such as U+009B CSI),
// format characters (bidirectional overrides, zero-width characters),
// other non-printable runes, and bytes that are not UTF-8. Printable text,
// also outside ASCII, is unchanged, as is the backslash. Every value from
// the database, a token or a JWKS goes through it (or through
// writeTerminalJSON) before it is printed: they are untrusted input.
func terminalSafe(s string) string {
	i := unsafeIndex(s)
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	b.WriteString(s[:i])
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || !strconv.IsPrint(r) {
			q := strconv.Quote(s[i : i+size]) // "\x1b", "\u202e", "\xff"
			b.WriteString(q[1 : len(q)-1])
		} else {
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// unsafeIndex is the byte index of the first character terminalSafe
// escapes, or -1.
func unsafeIndex(s string) int {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || !strconv.IsPrint(r) {
			return i
		}
		i += size
	}
	return -1
}

// writeTerminalJSON prints v as indented JSON that cannot drive a
// terminal either: encoding/json already escapes C0 controls inside
// strings, and every other non-printable character (DEL, C1 controls,
// format characters) is written as a \u escape, which means the same in
// JSON (RFC 8259, section 7). Outside strings the encoder writes only
// printable ASCII, spaces and newlines.
func writeTerminalJSON(w io.Writer, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	raw := buf.Bytes()
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); {
		r, size := utf8.DecodeRune(raw[i:])
		switch {
		case r == '\n' || r == ' ' || strconv.IsPrint(r):
			out = append(out, raw[i:i+size]...)
		case r > 0xFFFF:
			r1, r2 := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
		default:
			// encoding/json writes valid UTF-8 only, so r is a real rune.
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		i += size
	}
	_, err := w.Write(out)
	return err
}
