package main

// The components the project's resources use, registered the way Dapr's own
// cmd/daprd/components does it. Only these are linked in: Dapr's build tags
// (allcomponents, stablecomponents) would pull in every cloud SDK.

import (
	"github.com/dapr/components-contrib/nameresolution/mdns"
	kafkapubsub "github.com/dapr/components-contrib/pubsub/kafka"
	redispubsub "github.com/dapr/components-contrib/pubsub/redis"
	"github.com/dapr/components-contrib/secretstores/local/env"
	"github.com/dapr/components-contrib/secretstores/local/file"
	pgv1 "github.com/dapr/components-contrib/state/postgresql/v1"
	pgv2 "github.com/dapr/components-contrib/state/postgresql/v2"
	redisstate "github.com/dapr/components-contrib/state/redis"
	"github.com/dapr/dapr/pkg/components"
	nrLoader "github.com/dapr/dapr/pkg/components/nameresolution"
	pubsubLoader "github.com/dapr/dapr/pkg/components/pubsub"
	secretstoresLoader "github.com/dapr/dapr/pkg/components/secretstores"
	stateLoader "github.com/dapr/dapr/pkg/components/state"
)

func init() {
	stateLoader.DefaultRegistry.RegisterComponent(redisstate.NewRedisStateStore, "redis")
	for _, name := range []string{"postgres", "postgresql"} {
		stateLoader.DefaultRegistry.RegisterComponentWithVersions(name, components.Versioning{
			Preferred: components.VersionConstructor{Version: "v2", Constructor: pgv2.NewPostgreSQLStateStore},
			Others:    []components.VersionConstructor{{Version: "v1", Constructor: pgv1.NewPostgreSQLStateStore}},
			Default:   "v1",
		})
	}
	pubsubLoader.DefaultRegistry.RegisterComponent(redispubsub.NewRedisStreams, "redis")
	pubsubLoader.DefaultRegistry.RegisterComponent(kafkapubsub.NewKafka, "kafka")
	secretstoresLoader.DefaultRegistry.RegisterComponent(file.NewLocalSecretStore, "local.file")
	secretstoresLoader.DefaultRegistry.RegisterComponent(env.NewEnvSecretStore, "local.env")
	nrLoader.DefaultRegistry.RegisterComponent(mdns.NewResolver, "mdns")
}
