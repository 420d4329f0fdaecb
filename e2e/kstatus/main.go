// Command kstatus prints what kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status) says of one
// Kubernetes object: it reads the object as JSON or YAML on standard input and prints one line,
// "<Status>\t<message>" (e.g. "Current\tResource is Ready"). kstatus is the status model of kpt,
// Config Sync, Flux and Helm 4's --wait (the last two through the fluxcd/cli-utils fork, whose
// status package computes the same); the e2e tests use this command to check that edgevisor's
// objects read there as the controller means them.
//
// It exits 1 with a message on standard error when the input is not one object or kstatus
// cannot read it.
package main

import (
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kstatus < object.{json,yaml}")
		os.Exit(2)
	}
	line, err := compute(os.Stdin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(line)
}

func compute(in io.Reader) (string, error) {
	raw, err := io.ReadAll(in)
	if err != nil {
		return "", fmt.Errorf("reading standard input: %w", err)
	}
	// JSON is YAML, so one conversion reads both.
	doc, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return "", fmt.Errorf("parsing the object: %w", err)
	}
	// The apimachinery decoder keeps whole numbers as int64, as kstatus's generation check needs
	// (encoding/json would make them float64).
	var object map[string]any
	if err := utiljson.Unmarshal(doc, &object); err != nil {
		return "", fmt.Errorf("the input is not one object: %w", err)
	}
	if object == nil {
		return "", fmt.Errorf("the input is empty")
	}
	result, err := status.Compute(&unstructured.Unstructured{Object: object})
	if err != nil {
		return "", fmt.Errorf("computing the status: %w", err)
	}
	return fmt.Sprintf("%s\t%s", result.Status, result.Message), nil
}
