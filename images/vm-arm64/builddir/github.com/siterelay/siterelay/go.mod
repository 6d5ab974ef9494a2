module gokrazy/build/siterelay

go 1.26.8

require github.com/siterelay/siterelay v0.0.0-00010101000000-000000000000

// The relay is built from this checkout, with the module's own pinned
// dependencies (sitegen merges the checkout's go.sum into go.sum).
replace github.com/siterelay/siterelay => ../../../../../..
