module github.com/kvmnet/kvmnet

go 1.26.8

require (
	github.com/goccy/go-yaml v1.19.2
	golang.org/x/sys v0.50.0
)
