package probe

import (
	"encoding/xml"
	"fmt"
	"time"
)

type junitSuites struct {
	XMLName xml.Name     `xml:"testsuites"`
	Tests   int          `xml:"tests,attr"`
	Fails   int          `xml:"failures,attr"`
	Errors  int          `xml:"errors,attr"`
	Time    string       `xml:"time,attr"`
	Suites  []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name   string      `xml:"name,attr"`
	Tests  int         `xml:"tests,attr"`
	Fails  int         `xml:"failures,attr"`
	Errors int         `xml:"errors,attr"`
	Time   string      `xml:"time,attr"`
	Cases  []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitProblem `xml:"failure,omitempty"`
	Error     *junitProblem `xml:"error,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitProblem struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",chardata"`
}

// JUnit renders results as JUnit XML: one suite "kvmnet verify", one test
// case per probe (classname: the source namespace), a failure when the
// result is not the expected one, an error when the probe could not run.
func JUnit(results []Result) ([]byte, error) {
	s := junitSuite{Name: "kvmnet verify", Tests: len(results)}
	var total time.Duration
	for _, r := range results {
		total += r.Elapsed
		c := junitCase{
			Name:      r.Probe.Label(),
			Classname: r.Probe.FromNS,
			Time:      seconds(r.Elapsed),
			SystemOut: fmt.Sprintf("%s %s from %s: %s (%s)", r.Probe.Proto, r.Probe.To, r.Probe.FromNS, r.Got(), r.Detail),
		}
		switch {
		case r.Err != nil:
			s.Errors++
			c.Error = &junitProblem{Message: r.Err.Error(), Type: "probe error", Text: r.Err.Error()}
		case !r.OK:
			s.Fails++
			msg := fmt.Sprintf("want %s, got %s (%s)", r.Probe.expect(), r.Got(), r.Detail)
			c.Failure = &junitProblem{Message: msg, Type: "unexpected " + r.Got(), Text: msg}
		}
		s.Cases = append(s.Cases, c)
	}
	s.Time = seconds(total)
	out, err := xml.MarshalIndent(junitSuites{Tests: s.Tests, Fails: s.Fails, Errors: s.Errors, Time: s.Time, Suites: []junitSuite{s}}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("junit: %w", err)
	}
	return append([]byte(xml.Header), append(out, '\n')...), nil
}
