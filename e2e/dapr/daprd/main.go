// Command daprd is the real Dapr runtime of the pinned release, built with
// only the components reminder-worker's resources name (see components.go).
package main

import "github.com/dapr/dapr/cmd/daprd/app"

func main() {
	app.Run()
}
