// Package ferryv1 is the generated Go code of Ferry's wire API (ferry.v1):
// the WriterService stream between broker and writer and the DebugService
// for operators. Edit proto/ferry/v1/ferry.proto and run `make generate`.
package ferryv1
