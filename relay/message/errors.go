package message

import (
	"errors"
	"fmt"

	"github.com/emersion/go-smtp"
)

// The package's refusals: each error knows its SMTP reply, so the session
// answers what Prepare found without a table of its own.

// BareLineEndingError refuses a message with a bare CR or LF (Refuse mode).
type BareLineEndingError struct {
	// Line is the 1-based line of the message where it was found.
	Line int
}

func (e *BareLineEndingError) Error() string {
	return fmt.Sprintf("bare CR or LF in message data (line %d)", e.Line)
}

// SMTPError is the reply for the device.
func (e *BareLineEndingError) SMTPError() *smtp.SMTPError {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 11},
		Message: `bare CR or LF in message data; fix the sender or set limits.bare_line_endings to "normalise"`}
}

// NULError refuses a message with a NUL byte (RefuseNUL mode).
type NULError struct {
	// Line is the 1-based line of the message where it was found.
	Line int
}

func (e *NULError) Error() string {
	return fmt.Sprintf("NUL byte in message data (line %d)", e.Line)
}

// SMTPError is the reply for the device.
func (e *NULError) SMTPError() *smtp.SMTPError {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: fmt.Sprintf(`NUL byte in message data (line %d); fix the sender or set limits.nul_bytes to "remove"`, e.Line)}
}

// HeaderTooLargeError refuses a header section over Options.MaxHeaderBytes.
type HeaderTooLargeError struct{ Limit int }

func (e *HeaderTooLargeError) Error() string {
	return fmt.Sprintf("message header section is larger than %d bytes", e.Limit)
}

// SMTPError is the reply for the device.
func (e *HeaderTooLargeError) SMTPError() *smtp.SMTPError {
	return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: fmt.Sprintf("message header section is larger than %d bytes (limits.max_header_bytes); send fewer or shorter header fields", e.Limit)}
}

// LineTooLongError refuses a line over Options.MaxLineLength.
type LineTooLongError struct{ Line, Limit int }

func (e *LineTooLongError) Error() string {
	return fmt.Sprintf("line %d of the message is longer than %d bytes", e.Line, e.Limit)
}

// SMTPError is the reply for the device.
func (e *LineTooLongError) SMTPError() *smtp.SMTPError {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: fmt.Sprintf("line %d of the message is longer than %d bytes; make the sender encode attachments (base64 or quoted-printable) or raise limits.max_line_length", e.Line, e.Limit)}
}

// Reply returns the SMTP reply for an error from Prepare when it has one:
// the package's own refusals, or a *smtp.SMTPError from the DATA reader
// (such as smtp.ErrDataTooLarge). Other errors (a vanished client, a
// failed write to the spool) have none; the session answers those with a
// temporary failure of its own.
func Reply(err error) (*smtp.SMTPError, bool) {
	var r interface{ SMTPError() *smtp.SMTPError }
	if errors.As(err, &r) {
		return r.SMTPError(), true
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se, true
	}
	return nil, false
}
