# Rendered by fprnn; re-run with: gnuplot a5_len16_fpmamba1_noconv_report.gp
# (from the folder that holds a5_len16_fpmamba1_noconv_report.dat)
set termoption noenhanced
set datafile separator whitespace
set multiplot layout 2,1 title "length generalisation"
set grid
set key outside right top
set xlabel 'sequence length'
set arrow from 16, graph 0 to 16, graph 1 nohead dashtype 2 lc rgb '#888888'
set label 'train length' at 16, graph 0.95 offset 0.5,0 tc rgb '#666666'
set ylabel 'full-sequence accuracy (%)'
set yrange [0:105]
plot "a5_len16_fpmamba1_noconv_report.dat" index 0 using 1:2 with linespoints lw 2 title "no conv, seed 0", "a5_len16_fpmamba1_noconv_report.dat" index 1 using 1:2 with linespoints lw 2 title "no conv, seed 1", "a5_len16_fpmamba1_noconv_report.dat" index 2 using 1:2 with linespoints lw 2 title "no conv, seed 2", "a5_len16_fpmamba1_noconv_report.dat" index 3 using 1:2 with linespoints lw 2 title "no conv, seed 3", "a5_len16_fpmamba1_noconv_report.dat" index 4 using 1:2 with linespoints lw 2 title "no conv, 5738 steps (probe)", "a5_len16_fpmamba1_noconv_report.dat" index 5 using 1:2 with linespoints lw 2 title "conv, ℓ_max 32, 5714 steps (probe)", "a5_len16_fpmamba1_noconv_report.dat" index 6 using 1:2 with linespoints lw 2 title "conv, 17 000 steps (before)"
set ylabel 'fixed-point iterations (mean)'
set autoscale y
set logscale y
unset label
plot "a5_len16_fpmamba1_noconv_report.dat" index 0 using 1:3 with linespoints lw 2 title "no conv, seed 0", "a5_len16_fpmamba1_noconv_report.dat" index 1 using 1:3 with linespoints lw 2 title "no conv, seed 1", "a5_len16_fpmamba1_noconv_report.dat" index 2 using 1:3 with linespoints lw 2 title "no conv, seed 2", "a5_len16_fpmamba1_noconv_report.dat" index 3 using 1:3 with linespoints lw 2 title "no conv, seed 3", "a5_len16_fpmamba1_noconv_report.dat" index 4 using 1:3 with linespoints lw 2 title "no conv, 5738 steps (probe)", "a5_len16_fpmamba1_noconv_report.dat" index 5 using 1:3 with linespoints lw 2 title "conv, ℓ_max 32, 5714 steps (probe)", "a5_len16_fpmamba1_noconv_report.dat" index 6 using 1:3 with linespoints lw 2 title "conv, 17 000 steps (before)"
unset multiplot
