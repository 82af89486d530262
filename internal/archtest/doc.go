// Package archtest holds tests of the repository's architecture rules: which
// binary may link what, and that every package says what it is for.
package archtest
