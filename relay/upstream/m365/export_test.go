package m365

// FromMailbox is fromMailbox, for the fuzz test.
var FromMailbox = fromMailbox
