# Convenience targets; each is one script.
.PHONY: demo demo-one-region test bench-decision bench-envoy bench-propagation

demo:            ## three regions: allow -> revoke -> denied everywhere -> partition -> heal
	scripts/demo.sh

demo-one-region: ## nats-server + sidecar + Envoy: allow -> revoke -> deny
	scripts/demo-one-region.sh

test:            ## what CI runs
	scripts/install-deps.sh
	scripts/test.sh
