// Command helm-render renders a Helm chart the way `helm template` does, for tests on machines
// where no Helm binary can be installed.
//
// It uses the same building blocks as Helm 3: Go's text/template with missingkey=zero, the
// sprig v3 function library (minus env/expandenv), Helm's own functions (include, tpl,
// required, toYaml, fromYaml, fromYamlArray, toJson, fromJson, fromJsonArray, lookup), Helm's
// value coalescing (user values over the chart's values.yaml, maps merged deeply, null deletes
// a key), values.schema.json validation with gojsonschema, the chart's kubeVersion constraint,
// Helm's manifest splitting and its install order of kinds.
//
// Built with Debian's Go 1.19 in GOPATH mode (see ../render, the wrapper that builds and runs
// it); Debian names sprig v3 `github.com/Masterminds/sprig`.
//
// Usage:
//
//	helm-render --chart DIR [--values FILE]... [--set a.b=c]... [--release NAME]
//	            [--namespace NS] [--include-crds] [--kube-version V] [--api-versions G/V]...
//	            [--notes]
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/semver"
	"github.com/Masterminds/sprig"
	"github.com/xeipuuv/gojsonschema"
	"sigs.k8s.io/yaml"
)

// ---------------------------------------------------------------------------------------------
// Command line

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

type options struct {
	chartDir    string
	valueFiles  multiFlag
	sets        multiFlag
	release     string
	namespace   string
	includeCRDs bool
	kubeVersion string
	apiVersions multiFlag
	notes       bool
}

func main() {
	var o options
	fl := flag.NewFlagSet("helm-render", flag.ContinueOnError)
	fl.StringVar(&o.chartDir, "chart", "", "chart directory (required)")
	fl.Var(&o.valueFiles, "values", "values file merged over the chart's values.yaml (repeatable)")
	fl.Var(&o.sets, "set", "set a value: a.b=c[,d=e] (repeatable)")
	fl.StringVar(&o.release, "release", "switchboard", "release name")
	fl.StringVar(&o.namespace, "namespace", "default", "release namespace")
	fl.BoolVar(&o.includeCRDs, "include-crds", false, "print the chart's crds/ first")
	fl.StringVar(&o.kubeVersion, "kube-version", "v1.20.2", "Kubernetes version for .Capabilities")
	fl.Var(&o.apiVersions, "api-versions", "extra API version for .Capabilities.APIVersions (repeatable)")
	fl.BoolVar(&o.notes, "notes", false, "also print the rendered NOTES.txt, to stderr")
	if err := fl.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if o.chartDir == "" || fl.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "Error: --chart DIR is required and no positional arguments are accepted")
		fl.Usage()
		os.Exit(2)
	}
	out, err := run(&o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: %s\n", strings.TrimRight(err.Error(), "\n"))
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}

// ---------------------------------------------------------------------------------------------
// Chart loading

// Metadata mirrors Helm's chart.Metadata, so templates see .Chart.Name, .Chart.AppVersion, ...
type Metadata struct {
	Name         string            `json:"name,omitempty"`
	Home         string            `json:"home,omitempty"`
	Sources      []string          `json:"sources,omitempty"`
	Version      string            `json:"version,omitempty"`
	Description  string            `json:"description,omitempty"`
	Keywords     []string          `json:"keywords,omitempty"`
	Maintainers  []*Maintainer     `json:"maintainers,omitempty"`
	Icon         string            `json:"icon,omitempty"`
	APIVersion   string            `json:"apiVersion,omitempty"`
	Condition    string            `json:"condition,omitempty"`
	Tags         string            `json:"tags,omitempty"`
	AppVersion   string            `json:"appVersion,omitempty"`
	Deprecated   bool              `json:"deprecated,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	KubeVersion  string            `json:"kubeVersion,omitempty"`
	Dependencies []interface{}     `json:"dependencies,omitempty"`
	Type         string            `json:"type,omitempty"`
}

// Maintainer mirrors Helm's chart.Maintainer.
type Maintainer struct {
	Name  string `json:"name,omitempty"`
	Email string `json:"email,omitempty"`
	URL   string `json:"url,omitempty"`
}

type chartFile struct {
	name string // slash-separated, relative to the chart directory
	data []byte
}

type loadedChart struct {
	meta      *Metadata
	values    map[string]interface{}
	schema    []byte
	templates []chartFile
	crds      []chartFile
	files     Files
}

var chartNameRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func loadChart(dir string) (*loadedChart, error) {
	ign, err := loadHelmignore(dir)
	if err != nil {
		return nil, err
	}
	c := &loadedChart{values: map[string]interface{}{}, files: Files{}}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, werr error) error {
		if werr != nil {
			return werr
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		if ign.ignored(rel, d.IsDir()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch {
		case rel == "Chart.yaml":
			c.meta = &Metadata{}
			if err := yaml.Unmarshal(data, c.meta); err != nil {
				return fmt.Errorf("cannot load Chart.yaml: %w", err)
			}
		case rel == "values.yaml":
			if err := yaml.Unmarshal(data, &c.values); err != nil {
				return fmt.Errorf("cannot load values.yaml: %w", err)
			}
			if c.values == nil {
				c.values = map[string]interface{}{}
			}
		case rel == "values.schema.json":
			c.schema = data
		case strings.HasPrefix(rel, "templates/"):
			c.templates = append(c.templates, chartFile{rel, data})
		case strings.HasPrefix(rel, "charts/"):
			return fmt.Errorf("%s: subcharts are not supported by this renderer", rel)
		default:
			c.files[rel] = data
			if strings.HasPrefix(rel, "crds/") {
				switch strings.ToLower(path.Ext(rel)) {
				case ".yaml", ".yml", ".json":
					c.crds = append(c.crds, chartFile{rel, data})
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if c.meta == nil {
		return nil, fmt.Errorf("%s: Chart.yaml file is missing", dir)
	}
	m := c.meta
	switch {
	case m.APIVersion == "":
		return nil, errors.New("validation: chart.metadata.apiVersion is required")
	case m.APIVersion != "v1" && m.APIVersion != "v2":
		return nil, fmt.Errorf("validation: chart.metadata.apiVersion %q is invalid", m.APIVersion)
	case m.Name == "":
		return nil, errors.New("validation: chart.metadata.name is required")
	case !chartNameRe.MatchString(m.Name):
		return nil, fmt.Errorf("validation: chart.metadata.name %q is invalid", m.Name)
	case m.Version == "":
		return nil, errors.New("validation: chart.metadata.version is required")
	}
	if _, err := semver.StrictNewVersion(m.Version); err != nil {
		return nil, fmt.Errorf("validation: chart.metadata.version %q is invalid", m.Version)
	}
	if m.Type != "" && m.Type != "application" {
		return nil, fmt.Errorf("chart type %q cannot be rendered", m.Type)
	}
	sort.Slice(c.templates, func(i, j int) bool { return c.templates[i].name < c.templates[j].name })
	sort.Slice(c.crds, func(i, j int) bool { return c.crds[i].name < c.crds[j].name })
	return c, nil
}

// helmignore is a small version of Helm's pkg/ignore: one pattern a line, `#` comments, `!`
// negation, a trailing `/` for directories only, a pattern with a `/` matched against the path
// and one without against the base name. Helm always ignores hidden files under templates/.
type ignoreRule struct {
	pattern string
	negate  bool
	dirOnly bool
}

type helmignore []ignoreRule

func loadHelmignore(dir string) (helmignore, error) {
	rules := helmignore{{pattern: "templates/.?*"}}
	data, err := os.ReadFile(filepath.Join(dir, ".helmignore"))
	if errors.Is(err, fs.ErrNotExist) {
		return rules, nil
	}
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.Contains(line, "**") {
			return nil, fmt.Errorf(".helmignore: double-star (**) syntax is not supported: %q", line)
		}
		r := ignoreRule{}
		if strings.HasPrefix(line, "!") {
			r.negate = true
			line = line[1:]
		}
		if strings.HasSuffix(line, "/") {
			r.dirOnly = true
			line = strings.TrimSuffix(line, "/")
		}
		r.pattern = strings.TrimPrefix(line, "/")
		if _, err := path.Match(r.pattern, "x"); err != nil {
			return nil, fmt.Errorf(".helmignore: bad pattern %q: %w", line, err)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

func (h helmignore) ignored(rel string, isDir bool) bool {
	if rel == ".helmignore" {
		return false
	}
	out := false
	for _, r := range h {
		if r.dirOnly && !isDir {
			continue
		}
		target := path.Base(rel)
		if strings.Contains(r.pattern, "/") {
			target = rel
		}
		if ok, _ := path.Match(r.pattern, target); ok {
			out = !r.negate
		}
	}
	return out
}

// Files mirrors Helm's .Files: the chart's files that are not templates or chart metadata.
type Files map[string][]byte

// Get returns a file's content as a string, or "" when there is none.
func (f Files) Get(name string) string { return string(f.GetBytes(name)) }

// GetBytes returns a file's content, or nil.
func (f Files) GetBytes(name string) []byte { return f[name] }

// Glob returns the files whose path matches a shell pattern.
func (f Files) Glob(pattern string) Files {
	out := Files{}
	for name, data := range f {
		if ok, _ := path.Match(pattern, name); ok {
			out[name] = data
		}
	}
	return out
}

// Lines returns a file's lines.
func (f Files) Lines(name string) []string {
	s := f.Get(name)
	if s == "" {
		return []string{}
	}
	return strings.Split(s, "\n")
}

// AsConfig renders the files as the data of a ConfigMap (base name → content).
func (f Files) AsConfig() string {
	m := map[string]string{}
	for name, data := range f {
		m[path.Base(name)] = string(data)
	}
	return toYAML(m)
}

// AsSecrets renders the files as the data of a Secret (base name → base64 content).
func (f Files) AsSecrets() string {
	m := map[string][]byte{}
	for name, data := range f {
		m[path.Base(name)] = data
	}
	return toYAML(m) // []byte marshals as base64
}

// ---------------------------------------------------------------------------------------------
// Values

func readValuesFile(p string) (map[string]interface{}, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	m := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("failed to parse %s: %w", p, err)
	}
	if m == nil {
		m = map[string]interface{}{}
	}
	return m, nil
}

// mergeMaps merges b over a (Helm's mergeMaps for several --values files and --set).
func mergeMaps(a, b map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if bm, ok := v.(map[string]interface{}); ok {
			if am, ok := out[k].(map[string]interface{}); ok {
				out[k] = mergeMaps(am, bm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// coalesce lays the user's values over the chart's defaults like Helm's CoalesceValues: the user
// wins, tables are merged key by key, and a user null deletes the key.
func coalesce(defaults, user map[string]interface{}) map[string]interface{} {
	out := deepCopy(defaults).(map[string]interface{})
	for k, uv := range user {
		if uv == nil {
			delete(out, k)
			continue
		}
		um, uIsMap := uv.(map[string]interface{})
		dm, dIsMap := out[k].(map[string]interface{})
		switch {
		case uIsMap && dIsMap:
			out[k] = coalesce(dm, um)
		case uIsMap:
			if _, present := out[k]; present {
				fmt.Fprintf(os.Stderr, "warning: destination for %s is a table. Ignoring non-table value (%v)\n", k, out[k])
			}
			out[k] = coalesce(map[string]interface{}{}, um)
		default:
			if dIsMap {
				fmt.Fprintf(os.Stderr, "warning: cannot overwrite table with non table for %s (%v)\n", k, dm)
			}
			out[k] = deepCopy(uv)
		}
	}
	return out
}

func deepCopy(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, x := range t {
			m[k] = deepCopy(x)
		}
		return m
	case []interface{}:
		s := make([]interface{}, len(t))
		for i, x := range t {
			s[i] = deepCopy(x)
		}
		return s
	default:
		return v
	}
}

// parseSet applies one --set argument (`a.b=c,d[0]=e`) to dst, typing scalars like Helm's
// strvals: true/false → bool, null → nil, integers → int64, anything else → string. A backslash
// escapes `,`, `.` and `=`.
func parseSet(dst map[string]interface{}, arg string) error {
	for _, assignment := range splitUnescaped(arg, ',') {
		if assignment == "" {
			continue
		}
		kv := splitUnescaped(assignment, '=')
		if len(kv) < 2 {
			return fmt.Errorf("failed parsing --set data: key %q has no value", unescape(assignment))
		}
		key := kv[0]
		raw := unescape(strings.Join(kv[1:], "="))
		if err := setPath(dst, splitUnescaped(key, '.'), typedVal(raw), arg); err != nil {
			return err
		}
	}
	return nil
}

var indexRe = regexp.MustCompile(`^(.*)\[(\d+)\]$`)

func setPath(dst map[string]interface{}, keys []string, val interface{}, arg string) error {
	k := unescape(keys[0])
	if k == "" {
		return fmt.Errorf("failed parsing --set %q: empty key", arg)
	}
	if m := indexRe.FindStringSubmatch(k); m != nil {
		idx, _ := strconv.Atoi(m[2])
		if idx > 65536 {
			return fmt.Errorf("failed parsing --set %q: index %d too large", arg, idx)
		}
		list, _ := dst[m[1]].([]interface{})
		for len(list) <= idx {
			list = append(list, nil)
		}
		if len(keys) == 1 {
			list[idx] = val
		} else {
			child, ok := list[idx].(map[string]interface{})
			if !ok {
				child = map[string]interface{}{}
			}
			if err := setPath(child, keys[1:], val, arg); err != nil {
				return err
			}
			list[idx] = child
		}
		dst[m[1]] = list
		return nil
	}
	if len(keys) == 1 {
		dst[k] = val
		return nil
	}
	child, ok := dst[k].(map[string]interface{})
	if !ok {
		child = map[string]interface{}{}
		dst[k] = child
	}
	return setPath(child, keys[1:], val, arg)
}

func typedVal(s string) interface{} {
	switch strings.ToLower(s) {
	case "true":
		return true
	case "false":
		return false
	case "null":
		return nil
	}
	// Like Helm: a leading zero keeps the value a string ("0755", "007"), "0" is an int.
	if s == "0" || (len(s) > 0 && s[0] != '0') {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return n
		}
	}
	return s
}

func splitUnescaped(s string, sep byte) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) {
			cur.WriteByte(c)
			cur.WriteByte(s[i+1])
			i++
			continue
		}
		if c == sep {
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(c)
	}
	return append(parts, cur.String())
}

func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// validateSchema checks the merged values against values.schema.json like Helm does and lists
// every violation.
func validateSchema(chartName string, schema []byte, values map[string]interface{}) error {
	valuesJSON, err := json.Marshal(values)
	if err != nil {
		return fmt.Errorf("cannot convert values to JSON: %w", err)
	}
	result, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(schema), gojsonschema.NewBytesLoader(valuesJSON))
	if err != nil {
		return fmt.Errorf("%s: values.schema.json: %w", chartName, err)
	}
	if result.Valid() {
		return nil
	}
	var b strings.Builder
	b.WriteString("values don't meet the specifications of the schema(s) in the following chart(s):\n")
	b.WriteString(chartName + ":\n")
	for _, e := range result.Errors() {
		fmt.Fprintf(&b, "- %s\n", e.String())
	}
	return errors.New(b.String())
}

// ---------------------------------------------------------------------------------------------
// Capabilities

// KubeVersion mirrors Helm's chartutil.KubeVersion.
type KubeVersion struct {
	Version string
	Major   string
	Minor   string
}

func (k KubeVersion) String() string { return k.Version }

// GitVersion is the deprecated alias of Version that Helm keeps.
func (k KubeVersion) GitVersion() string { return k.Version }

// VersionSet mirrors Helm's chartutil.VersionSet.
type VersionSet []string

// Has reports whether an API version (`group/version` or `group/version/Kind`) is available.
func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

// HelmVersion mirrors the fields of Helm's version.BuildInfo.
type HelmVersion struct {
	Version      string
	GitCommit    string
	GitTreeState string
	GoVersion    string
}

// Capabilities mirrors Helm's chartutil.Capabilities.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
	HelmVersion HelmVersion
}

// The group/versions a Kubernetes 1.20 client knows, Helm's default for `helm template`.
var defaultAPIVersions = []string{
	"v1",
	"admissionregistration.k8s.io/v1", "admissionregistration.k8s.io/v1beta1",
	"apiextensions.k8s.io/v1", "apiextensions.k8s.io/v1beta1",
	"apiregistration.k8s.io/v1", "apiregistration.k8s.io/v1beta1",
	"apps/v1", "apps/v1beta1", "apps/v1beta2",
	"authentication.k8s.io/v1", "authentication.k8s.io/v1beta1",
	"authorization.k8s.io/v1", "authorization.k8s.io/v1beta1",
	"autoscaling/v1", "autoscaling/v2beta1", "autoscaling/v2beta2",
	"batch/v1", "batch/v1beta1", "batch/v2alpha1",
	"certificates.k8s.io/v1", "certificates.k8s.io/v1beta1",
	"coordination.k8s.io/v1", "coordination.k8s.io/v1beta1",
	"discovery.k8s.io/v1beta1",
	"events.k8s.io/v1", "events.k8s.io/v1beta1",
	"extensions/v1beta1",
	"flowcontrol.apiserver.k8s.io/v1alpha1", "flowcontrol.apiserver.k8s.io/v1beta1",
	"networking.k8s.io/v1", "networking.k8s.io/v1beta1",
	"node.k8s.io/v1", "node.k8s.io/v1alpha1", "node.k8s.io/v1beta1",
	"policy/v1beta1",
	"rbac.authorization.k8s.io/v1", "rbac.authorization.k8s.io/v1alpha1", "rbac.authorization.k8s.io/v1beta1",
	"scheduling.k8s.io/v1", "scheduling.k8s.io/v1alpha1", "scheduling.k8s.io/v1beta1",
	"storage.k8s.io/v1", "storage.k8s.io/v1alpha1", "storage.k8s.io/v1beta1",
}

func capabilities(kubeVersion string, extra []string) (*Capabilities, error) {
	v, err := semver.NewVersion(kubeVersion)
	if err != nil {
		return nil, fmt.Errorf("invalid --kube-version %q: %w", kubeVersion, err)
	}
	apis := append(VersionSet{}, defaultAPIVersions...)
	apis = append(apis, extra...)
	return &Capabilities{
		KubeVersion: KubeVersion{
			Version: "v" + v.String(),
			Major:   strconv.FormatUint(v.Major(), 10),
			Minor:   strconv.FormatUint(v.Minor(), 10),
		},
		APIVersions: apis,
		HelmVersion: HelmVersion{Version: "v3.11.0", GitTreeState: "clean", GoVersion: "go1.19"},
	}, nil
}

// ---------------------------------------------------------------------------------------------
// Functions

func toYAML(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYAML(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromYAMLArray(s string) []interface{} {
	a := []interface{}{}
	if err := yaml.Unmarshal([]byte(s), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromJSONArray(s string) []interface{} {
	a := []interface{}{}
	if err := json.Unmarshal([]byte(s), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

func required(warn string, val interface{}) (interface{}, error) {
	if val == nil {
		return val, errors.New(warn)
	}
	if s, ok := val.(string); ok && s == "" {
		return val, errors.New(warn)
	}
	return val, nil
}

const recursionMaxNums = 1000

// includeFun is Helm's `include`: runs a named template into a string.
func includeFun(t *template.Template, includedNames map[string]int) func(string, interface{}) (string, error) {
	return func(name string, data interface{}) (string, error) {
		var buf strings.Builder
		if v, ok := includedNames[name]; ok {
			if v > recursionMaxNums {
				return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
			}
			includedNames[name]++
		} else {
			includedNames[name] = 1
		}
		err := t.ExecuteTemplate(&buf, name, data)
		includedNames[name]--
		return buf.String(), err
	}
}

// tplFun is Helm's `tpl`: renders a string as a template with the chart's named templates.
func tplFun(parent *template.Template, includedNames map[string]int) func(string, interface{}) (string, error) {
	return func(tpl string, vals interface{}) (string, error) {
		t, err := parent.Clone()
		if err != nil {
			return "", fmt.Errorf("cannot clone template: %w", err)
		}
		t.Option("missingkey=zero")
		t.Funcs(template.FuncMap{
			"include": includeFun(t, includedNames),
			"tpl":     tplFun(t, includedNames),
		})
		t, err = t.New(parent.Name()).Parse(tpl)
		if err != nil {
			return "", fmt.Errorf("cannot parse template %q: %w", tpl, err)
		}
		var buf strings.Builder
		if err := t.Execute(&buf, vals); err != nil {
			return "", fmt.Errorf("error during tpl function execution for %q: %w", tpl, err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
}

func funcMap() template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	extra := template.FuncMap{
		"toYaml":        toYAML,
		"fromYaml":      fromYAML,
		"fromYamlArray": fromYAMLArray,
		"toJson":        toJSON,
		"fromJson":      fromJSON,
		"fromJsonArray": fromJSONArray,
		"required":      required,
		"lookup": func(apiVersion, resource, namespace, name string) (map[string]interface{}, error) {
			return map[string]interface{}{}, nil
		},
		// Replaced per render with closures over the template set.
		"include": func(string, interface{}) string { return "not implemented" },
		"tpl":     func(string, interface{}) interface{} { return "not implemented" },
	}
	for k, v := range extra {
		f[k] = v
	}
	return f
}

// ---------------------------------------------------------------------------------------------
// Rendering

type manifest struct {
	source  string
	content string
	kind    string
}

var errorCallingRe = regexp.MustCompile(`^executing ".*" at <.*>: error calling [A-Za-z0-9_]+: `)

// cleanupExecError shortens a template execution error like Helm does:
// "execution error at (chart/templates/file.yaml:LINE:COL): message".
func cleanupExecError(filename string, err error) error {
	var execErr template.ExecError
	if !errors.As(err, &execErr) {
		return fmt.Errorf("rendering %s: %w", filename, err)
	}
	tokens := strings.SplitN(err.Error(), ": ", 3)
	if len(tokens) != 3 {
		return fmt.Errorf("execution error in (%s): %s", filename, err)
	}
	msg := tokens[2]
	if loc := errorCallingRe.FindStringIndex(msg); loc != nil {
		msg = msg[loc[1]:]
	}
	return fmt.Errorf("execution error at (%s): %s", tokens[1], msg)
}

// Helm's releaseutil.InstallOrder.
var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
	"PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
	"ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
	"CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
	"ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
	"DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
	"APIService",
}

// Helm's releaseutil.SplitManifests separator.
var sepRe = regexp.MustCompile(`(?:^|\s*\n)---\s*`)

func run(o *options) (string, error) {
	c, err := loadChart(o.chartDir)
	if err != nil {
		return "", err
	}
	caps, err := capabilities(o.kubeVersion, o.apiVersions)
	if err != nil {
		return "", err
	}
	if c.meta.KubeVersion != "" {
		constraint, err := semver.NewConstraint(c.meta.KubeVersion)
		if err != nil {
			return "", fmt.Errorf("chart %s has an invalid kubeVersion %q: %w", c.meta.Name, c.meta.KubeVersion, err)
		}
		v, _ := semver.NewVersion(caps.KubeVersion.Version)
		if !constraint.Check(v) {
			return "", fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s", c.meta.KubeVersion, caps.KubeVersion.Version)
		}
	}

	user := map[string]interface{}{}
	for _, f := range o.valueFiles {
		m, err := readValuesFile(f)
		if err != nil {
			return "", err
		}
		user = mergeMaps(user, m)
	}
	for _, s := range o.sets {
		if err := parseSet(user, s); err != nil {
			return "", err
		}
	}
	values := coalesce(c.values, user)
	if c.schema != nil {
		if err := validateSchema(c.meta.Name, c.schema, values); err != nil {
			return "", err
		}
	}

	// One template set for the whole chart, so every file sees every `define`.
	root := template.New("gotpl").Option("missingkey=zero").Funcs(funcMap())
	includedNames := map[string]int{}
	root.Funcs(template.FuncMap{
		"include": includeFun(root, includedNames),
		"tpl":     tplFun(root, includedNames),
	})
	for _, f := range c.templates {
		name := path.Join(c.meta.Name, f.name)
		if _, err := root.New(name).Parse(string(f.data)); err != nil {
			return "", fmt.Errorf("parse error in %s: %w", name, err)
		}
	}

	release := map[string]interface{}{
		"Name":      o.release,
		"Namespace": o.namespace,
		"Revision":  1,
		"IsUpgrade": false,
		"IsInstall": true,
		"Service":   "Helm",
	}
	var manifests []manifest
	for _, f := range c.templates {
		name := path.Join(c.meta.Name, f.name)
		if strings.HasPrefix(path.Base(f.name), "_") {
			continue
		}
		top := map[string]interface{}{
			"Values":       values,
			"Release":      release,
			"Chart":        c.meta,
			"Capabilities": caps,
			"Files":        c.files,
			"Subcharts":    map[string]interface{}{},
			"Template": map[string]interface{}{
				"Name":     name,
				"BasePath": path.Join(c.meta.Name, "templates"),
			},
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, top); err != nil {
			return "", cleanupExecError(name, err)
		}
		if path.Base(f.name) == "NOTES.txt" {
			// Rendered to catch errors; `helm template` never prints it with the manifests.
			if o.notes {
				fmt.Fprintf(os.Stderr, "NOTES:\n%s\n", strings.ReplaceAll(buf.String(), "<no value>", ""))
			}
			continue
		}
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		for _, doc := range sepRe.Split(strings.TrimSpace(out), -1) {
			doc = strings.TrimSpace(doc)
			if doc == "" {
				continue
			}
			var parsed interface{}
			if err := yaml.Unmarshal([]byte(doc), &parsed); err != nil {
				return "", fmt.Errorf("YAML parse error on %s: %w\n--- rendered document ---\n%s", name, err, doc)
			}
			if parsed == nil {
				continue // only comments
			}
			head, ok := parsed.(map[string]interface{})
			if !ok {
				return "", fmt.Errorf("%s: a rendered document is not a mapping:\n%s", name, doc)
			}
			kind, _ := head["kind"].(string)
			if apiVersion, _ := head["apiVersion"].(string); apiVersion == "" || kind == "" {
				return "", fmt.Errorf("%s: a rendered document has no apiVersion or kind:\n%s", name, doc)
			}
			manifests = append(manifests, manifest{source: name, content: doc, kind: kind})
		}
	}
	rank := map[string]int{}
	for i, k := range installOrder {
		rank[k] = i
	}
	sort.SliceStable(manifests, func(i, j int) bool {
		ri, iok := rank[manifests[i].kind]
		rj, jok := rank[manifests[j].kind]
		switch {
		case iok && jok:
			return ri < rj
		case iok != jok:
			return iok // known kinds first
		default:
			return manifests[i].kind < manifests[j].kind
		}
	})

	var b strings.Builder
	if o.includeCRDs {
		for _, f := range c.crds {
			fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", path.Join(c.meta.Name, f.name), strings.TrimRight(string(f.data), "\n"))
		}
	}
	for _, m := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.source, m.content)
	}
	return b.String(), nil
}
