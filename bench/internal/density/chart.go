package density

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

var colors = map[string]color.Color{
	"pirun":        color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	"docker":       color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	"docker-tuned": color.RGBA{R: 0x17, G: 0xbe, B: 0xcf, A: 0xff},
	"podman":       color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
}

// medians are the points of one runtime: x = N, y = median, with the
// range as error bars.
type medians struct {
	xs []float64
	ss []Stat
}

func (m medians) Len() int                    { return len(m.xs) }
func (m medians) XY(i int) (float64, float64) { return m.xs[i], m.ss[i].Median }
func (m medians) YError(i int) (float64, float64) {
	return m.ss[i].Median - m.ss[i].Min, m.ss[i].Max - m.ss[i].Median
}

// WriteChart draws memory per container and the time until all answer,
// against N, one line per runtime, into path (.png or .svg).
func WriteChart(path string, runs []Run) error {
	cells := Summarize(runs)
	mem := map[string]*medians{}
	start := map[string]*medians{}
	var names []string
	for _, c := range cells {
		if c.Runs == 0 || c.Mem.N == 0 {
			continue
		}
		if mem[c.Runtime] == nil {
			mem[c.Runtime], start[c.Runtime] = &medians{}, &medians{}
			names = append(names, c.Runtime)
		}
		mem[c.Runtime].add(float64(c.N), c.Mem)
		start[c.Runtime].add(float64(c.N), c.AllAnswering)
	}
	if len(names) == 0 {
		return fmt.Errorf("chart: no runs with containers to draw")
	}
	pm, err := panel("Host memory per container", "kB per container (MemAvailable drop)", names, mem)
	if err != nil {
		return err
	}
	ps, err := panel("Start: until all N answer HTTP", "seconds", names, start)
	if err != nil {
		return err
	}

	const w, h = 12 * vg.Inch, 5 * vg.Inch
	var c draw.Canvas
	var save func() error
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	switch strings.ToLower(filepath.Ext(path)) {
	case ".svg":
		sc := vgsvg.New(w, h)
		c = draw.New(sc)
		save = func() error { _, err := sc.WriteTo(f); return err }
	default:
		ic := vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(110), vgimg.UseBackgroundColor(color.White))}
		c = draw.New(ic)
		save = func() error { _, err := ic.WriteTo(f); return err }
	}
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Inch / 3, PadY: vg.Inch / 6, PadTop: vg.Inch / 6, PadBottom: vg.Inch / 6, PadLeft: vg.Inch / 6, PadRight: vg.Inch / 4}
	for i, p := range []*plot.Plot{pm, ps} {
		p.Draw(tiles.At(c, i, 0))
	}
	if err := save(); err != nil {
		return err
	}
	return f.Close()
}

func panel(title, ylabel string, names []string, data map[string]*medians) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "N (containers)"
	p.Y.Label.Text = ylabel
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = logTicks{}, logTicks{}
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	xmin, xmax, ymin, ymax := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, name := range names {
		d := data[name]
		if d == nil || d.Len() == 0 {
			continue
		}
		l, pts, err := plotter.NewLinePoints(d)
		if err != nil {
			return nil, err
		}
		col := colors[name]
		if col == nil {
			col = color.Black
		}
		l.Color, pts.Color = col, col
		l.Width = vg.Points(1.5)
		pts.Shape = draw.CircleGlyph{}
		pts.Radius = vg.Points(3)
		eb, err := plotter.NewYErrorBars(d)
		if err != nil {
			return nil, err
		}
		eb.Color = col
		p.Add(l, pts, eb)
		p.Legend.Add(name, l, pts)
		for i := range d.xs {
			xmin, xmax = min(xmin, d.xs[i]), max(xmax, d.xs[i])
			ymin, ymax = min(ymin, d.ss[i].Min), max(ymax, d.ss[i].Max)
		}
	}
	if math.IsInf(xmin, 1) { // nothing to draw
		xmin, xmax, ymin, ymax = 1, 10, 1, 10
	}
	// Room around the points, and never a non-positive bound on a log axis.
	p.X.Min, p.X.Max = xmin/1.5, xmax*1.5
	p.Y.Min, p.Y.Max = math.Max(ymin/2, 1e-3), ymax*2
	return p, nil
}

// logTicks labels 1, 2, 5 × powers of ten.
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for e := math.Floor(math.Log10(lo)) - 1; e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v < lo || v > hi {
				continue
			}
			ts = append(ts, plot.Tick{Value: v, Label: fmt.Sprintf("%g", v)})
		}
	}
	return ts
}

// add appends a point; a log axis cannot show a median ≤ 0 (a memory
// drop lost in the noise of a small N), and a range reaching below 0 is cut.
func (m *medians) add(x float64, s Stat) {
	if s.N == 0 || s.Median <= 0 {
		return
	}
	s.Min = max(s.Min, s.Median/100)
	m.xs, m.ss = append(m.xs, x), append(m.ss, s)
}
